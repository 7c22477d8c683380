#!/usr/bin/env python3
"""Writes Weir's container images as OCI image archives, without Docker and without network.

Usage: oci_images.py --bin DIR --out DIR     (DIR of --bin: the static musl binaries)
       oci_images.py --check DIR             (checks archives already written)

One archive per image, `OUT/<name>.tar`: an OCI image layout (oci-layout, index.json, blobs/)
that also carries Docker's `manifest.json`, the shape `docker save` writes since Docker 25, so
that `ctr -n k8s.io images import`, `kind load image-archive`, `docker load` and skopeo all take
it. Each image is one uncompressed layer written here (fixed mtimes and owners: the same
binaries give the same digests), tagged as the chart's values and the shop's manifests name it
(read from charts/weir and examples/shop/k8s, so the two cannot drift apart).

| archive           | image                                  | runs                         | user       |
| ----------------- | -------------------------------------- | ---------------------------- | ---------- |
| weir-operator.tar | ghcr.io/weir-mesh/weir-operator:<app>  | /weir-operator run           | 65532      |
| weir-proxy.tar    | ghcr.io/weir-mesh/weir-sidecar:<app>   | /weir-sidecar                | 1337       |
| weir-init.tar     | ghcr.io/weir-mesh/weir-init:<app>      | /weir-sidecar init           | 0 (root)   |
| weir-shop.tar     | weir-shop:<app>                        | /weir-shop                   | 65532      |

The proxy runs as uid 1337, the uid `weir-sidecar init` exempts from interception. The init
runs as root (the webhook adds NET_ADMIN and NET_RAW and nothing else; its root filesystem
stays read-only: the xtables lock goes to /dev/shm, see XTABLES_LOCKFILE below).

Why the init image carries Debian's iptables rather than Weir programming netfilter itself:
`weir-sidecar init` applies its rules as one `iptables-restore --noflush` transaction with either
back end (nft or legacy), and that exact path is what the interception test runs on real
namespaces. Talking nf_tables netlink and the legacy setsockopt interface ourselves would be a
second, untested implementation of both back ends. So the layer holds the build machine's
`xtables-nft-multi` and `xtables-legacy-multi` (with the `iptables-*-save/restore` names pointing
at them), every shared library they and the xtables extension modules need (found with `ldd`,
symbolic links kept, the dynamic loader included) and the extension modules themselves. It needs
a Debian-like machine with the `iptables` package installed (CI has it).

Checks (--check, and after writing): each archive's index, manifest, config and layer digests
match; entrypoint, command and user are the table's; the proxy image is at most 20 MB; the init
image holds the iptables commands and their libraries; nothing runs as root but the init.

Then, where it can (root, `unshare`), the init image is *run*: its layer is unpacked and, in a
fresh network and mount namespace, chrooted into with the image's environment and the `/dev`,
`/proc` and `/dev/shm` a container runtime gives, `/weir-sidecar init` must install the rules
(auto: nft), leave no legacy table behind, install with the legacy back end when asked, and
`--remove` must leave no rule of Weir's in either. Elsewhere it says SKIPPED and why.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed mtime for every file: the same inputs give the same layer digest.
MTIME = 1_700_000_000
PROXY_LIMIT = 20_000_000
IPTABLES_COMMANDS = [
    "iptables-nft-restore",
    "iptables-nft-save",
    "iptables-legacy-restore",
    "iptables-legacy-save",
    "iptables-restore",
    "iptables-save",
]
XTABLES_MODULES = "/usr/lib/x86_64-linux-gnu/xtables"


def fail(message):
    print(f"FAIL {message}", file=sys.stderr)
    sys.exit(1)


# ---- What the images are called: read from the chart and the shop's manifests ---------------

def chart_values():
    """{section: repository} for the top-level sections of values.yaml, and the appVersion."""
    repositories = {}
    section = None
    with open(os.path.join(ROOT, "charts/weir/values.yaml")) as f:
        for line in f:
            if re.match(r"^[A-Za-z]\w*:\s*$", line):
                section = line.split(":")[0]
            m = re.match(r"^\s+repository:\s*(\S+)", line)
            if m and section and section not in repositories:
                repositories[section] = m.group(1).strip("\"'")
    with open(os.path.join(ROOT, "charts/weir/Chart.yaml")) as f:
        m = re.search(r'^appVersion:\s*"?([^"\s]+)"?', f.read(), re.M)
    if not m:
        fail("charts/weir/Chart.yaml has no appVersion")
    return repositories, m.group(1)


def shop_image():
    """The one image every Deployment of examples/shop/k8s runs."""
    folder = os.path.join(ROOT, "examples/shop/k8s")
    images = set()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(folder, name)) as f:
                images.update(re.findall(r"^\s+image:\s*(\S+)", f.read(), re.M))
    if len(images) != 1:
        fail(f"examples/shop/k8s names {sorted(images)}; expected one shop image")
    return images.pop()


def images():
    repositories, version = chart_values()
    for section in ("operator", "proxy", "init"):
        if section not in repositories:
            fail(f"charts/weir/values.yaml has no {section}.image.repository")
    return [
        dict(archive="weir-operator", ref=f"{repositories['operator']}:{version}",
             binary="weir-operator", entrypoint=["/weir-operator"], cmd=["run"],
             user="65532:65532", limit=70_000_000),
        dict(archive="weir-proxy", ref=f"{repositories['proxy']}:{version}",
             binary="weir-sidecar", entrypoint=["/weir-sidecar"], cmd=[],
             user="1337:1337", limit=PROXY_LIMIT),
        dict(archive="weir-init", ref=f"{repositories['init']}:{version}",
             binary="weir-sidecar", entrypoint=["/weir-sidecar", "init"], cmd=[],
             user="0:0", limit=40_000_000, iptables=True,
             # Root filesystem read-only: the lock goes to the pod's tmpfs.
             env=["XTABLES_LOCKFILE=/dev/shm/xtables.lock"]),
        dict(archive="weir-shop", ref=shop_image(), binary="weir-shop",
             entrypoint=["/weir-shop"], cmd=[], user="65532:65532", limit=50_000_000),
    ]


def normalized(ref):
    """The full name containerd and the kubelet use: docker.io/library/ for bare names."""
    name = ref.rsplit(":", 1)[0]
    first = name.split("/")[0]
    if "/" not in name:
        return "docker.io/library/" + ref
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + ref
    return ref


# ---- Layers ---------------------------------------------------------------------------------

class Layer:
    """A tar layer being built: directories, symbolic links and files, each added once."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _info(self, path, kind, mode):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def directory(self, path, mode=0o755):
        path = path.rstrip("/")
        if not path or path in self.seen:
            return
        self.directory(os.path.dirname(path))
        self.seen.add(path)
        self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode))

    def symlink(self, path, target):
        if path in self.seen:
            return
        self.directory(os.path.dirname(path))
        self.seen.add(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def file(self, path, data, mode=0o644):
        if path in self.seen:
            return
        self.directory(os.path.dirname(path))
        self.seen.add(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def host_path(self, path):
        """Adds a file of this machine at the same path, with every symbolic link on the way
        (Debian's /lib -> usr/lib, library version links, the loader's link) kept as a link."""
        parts = [p for p in path.split("/") if p]
        current = ""
        for i, part in enumerate(parts):
            current = f"{current}/{part}"
            if os.path.islink(current):
                target = os.readlink(current)
                self.symlink(current, target)
                base = os.path.dirname(current) if not target.startswith("/") else ""
                resolved = os.path.normpath(os.path.join(base or "/", target))
                rest = "/".join(parts[i + 1:])
                return self.host_path(resolved + ("/" + rest if rest else ""))
        if os.path.isdir(current):
            self.directory(current)
        else:
            with open(current, "rb") as f:
                self.file(current, f.read(), os.stat(current).st_mode & 0o7777)

    def finish(self):
        self.tar.close()
        return self.buffer.getvalue()


def libraries(binary):
    """The shared libraries `binary` loads, loader included, as absolute paths."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"ldd {binary}: {out.stderr.strip()}")
    found = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            fail(f"{binary} needs a library this machine lacks: {line}")
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            found.append(m.group(1))
    return found


def add_iptables(layer):
    """Debian's iptables (nft and legacy), its libraries and extension modules (see the
    module doc for why)."""
    for command in IPTABLES_COMMANDS:
        path = f"/usr/sbin/{command}"
        if not os.path.exists(path):
            fail(f"{path} is missing: install Debian's iptables package")
        real = os.path.realpath(path)
        if os.path.dirname(real) != "/usr/sbin":
            fail(f"{path} resolves to {real}, outside /usr/sbin")
        # iptables-restore/-save are Debian alternatives: in the image they are the nft ones
        # (`init` names its back end anyway, and only falls back to these).
        layer.symlink(path, os.path.basename(real) if "-nft-" in command or "-legacy-" in command
                      else "xtables-nft-multi")
        layer.host_path(real)
        for library in libraries(real):
            layer.host_path(library)
    if not os.path.isdir(XTABLES_MODULES):
        fail(f"{XTABLES_MODULES} is missing: install Debian's iptables package")
    for name in sorted(os.listdir(XTABLES_MODULES)):
        module = os.path.join(XTABLES_MODULES, name)
        layer.host_path(module)
        if name.endswith(".so") and not os.path.islink(module):
            for library in libraries(module):
                layer.host_path(library)
    for etc in ("/etc/protocols", "/etc/services", "/etc/ethertypes"):
        if os.path.exists(etc):
            layer.host_path(etc)
    # Debian's merged /usr: the loader is found at /lib64/…
    for link, target in (("/lib64", "usr/lib64"), ("/lib", "usr/lib"), ("/sbin", "usr/sbin"),
                         ("/bin", "usr/bin")):
        if os.path.islink(link) and os.readlink(link) == target:
            layer.symlink(link, target)


def rootfs(image, bin_dir):
    layer = Layer()
    uid, gid = image["user"].split(":")
    layer.directory("/etc")
    layer.file("/etc/passwd", (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
        "weir-proxy:x:1337:1337:weir-proxy:/:/sbin/nologin\n").encode())
    layer.file("/etc/group", b"root:x:0:\nnonroot:x:65532:\nweir-proxy:x:1337:\n")
    layer.directory("/tmp", 0o1777)
    binary = os.path.join(bin_dir, image["binary"])
    with open(binary, "rb") as f:
        data = f.read()
    if interpreter(binary):
        fail(f"{binary} is dynamically linked; the images need static (musl) binaries")
    layer.file(image["entrypoint"][0], data, 0o755)
    if image.get("iptables"):
        add_iptables(layer)
    return layer.finish()


def interpreter(binary):
    out = subprocess.run(["readelf", "-l", binary], capture_output=True, text=True)
    return "INTERP" in out.stdout


# ---- The archive ----------------------------------------------------------------------------

def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_archive(image, layer, out_dir):
    layer_digest = digest(layer)
    env = [PATH_ENV] + image.get("env", [])
    config = canonical({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "User": image["user"],
            "Entrypoint": image["entrypoint"],
            "Cmd": image["cmd"] or None,
            "Env": env,
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.source": "https://github.com/weir-mesh/weir",
                "org.opencontainers.image.title": image["archive"],
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": ".ci/images"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    })
    full_name = normalized(image["ref"])
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest),
            "size": len(manifest),
            "annotations": {
                "io.containerd.image.name": full_name,
                "org.opencontainers.image.ref.name": full_name.rsplit(":", 1)[1],
            },
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    })
    blob = lambda d: "blobs/sha256/" + d.split(":", 1)[1]  # noqa: E731
    docker_manifest = canonical([{
        "Config": blob(digest(config)),
        "RepoTags": [image["ref"]],
        "Layers": [blob(layer_digest)],
    }])
    path = os.path.join(out_dir, image["archive"] + ".tar")
    with tarfile.open(path + ".part", "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, MTIME, 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
        add("blobs", None, tarfile.DIRTYPE)
        add("blobs/sha256", None, tarfile.DIRTYPE)
        for data in (layer, config, manifest):
            add(blob(digest(data)), data)
        add("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index)
        add("manifest.json", docker_manifest)
    os.replace(path + ".part", path)
    return path


# ---- Checks ---------------------------------------------------------------------------------

def check(path, image):
    """Reads an archive back as a loader would and checks it against the table."""
    problems = []
    with tarfile.open(path) as tar:
        def read(name):
            return tar.extractfile(name).read()
        names = set(tar.getnames())
        for required in ("oci-layout", "index.json", "manifest.json"):
            if required not in names:
                problems.append(f"no {required}")
        if problems:
            return problems
        index = json.loads(read("index.json"))
        descriptor = index["manifests"][0]
        annotations = descriptor.get("annotations", {})
        if annotations.get("io.containerd.image.name") != normalized(image["ref"]):
            problems.append(f"named {annotations.get('io.containerd.image.name')}, "
                            f"expected {normalized(image['ref'])}")

        def blob(d):
            data = read("blobs/sha256/" + d["digest"].split(":", 1)[1])
            if digest(data) != d["digest"] or len(data) != d["size"]:
                problems.append(f"blob {d['digest']} does not match its digest or size")
            return data
        manifest = json.loads(blob(descriptor))
        config = json.loads(blob(manifest["config"]))
        layers = [blob(layer) for layer in manifest["layers"]]
        if config["rootfs"]["diff_ids"] != [layer["digest"] for layer in manifest["layers"]]:
            problems.append("the config's diff_ids are not its layers (uncompressed)")
        docker = json.loads(read("manifest.json"))
        if docker[0]["RepoTags"] != [image["ref"]]:
            problems.append(f"manifest.json tags {docker[0]['RepoTags']}, expected {image['ref']}")
        c = config["config"]
        if c.get("Entrypoint") != image["entrypoint"] or (c.get("Cmd") or []) != image["cmd"]:
            problems.append(f"runs {c.get('Entrypoint')} {c.get('Cmd')}, "
                            f"expected {image['entrypoint']} {image['cmd']}")
        if c.get("User") != image["user"]:
            problems.append(f"user {c.get('User')}, expected {image['user']}")
        if c.get("User", "").split(":")[0] in ("", "0", "root") and not image.get("iptables"):
            problems.append("runs as root")
        size = sum(len(layer) for layer in layers)
        if size > image["limit"]:
            problems.append(f"{size / 1e6:.1f} MB, over its limit of {image['limit'] / 1e6:.0f} MB")
        contents = set()
        for layer in layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as t:
                contents.update("/" + n for n in t.getnames())
        if image["entrypoint"][0] not in contents:
            problems.append(f"no {image['entrypoint'][0]} in the layer")
        if image.get("iptables"):
            for command in IPTABLES_COMMANDS:
                if f"/usr/sbin/{command}" not in contents:
                    problems.append(f"no /usr/sbin/{command}")
            for needed in ("/lib64", "/usr/lib/x86_64-linux-gnu/libxtables.so.12",
                           "/usr/lib/x86_64-linux-gnu/libnftnl.so.11",
                           "/usr/lib/x86_64-linux-gnu/xtables/libxt_owner.so",
                           "/usr/lib/x86_64-linux-gnu/xtables/libxt_REDIRECT.so"):
                if needed not in contents:
                    problems.append(f"no {needed}")
    print(f"{image['archive'] + '.tar':<18} {image['ref']:<42} {size / 1e6:5.1f} MB  "
          f"user {image['user']:<11} {' '.join(image['entrypoint'] + image['cmd'])}")
    return problems


def smoke_init(path):
    """Runs the init image's `weir-sidecar init` as a pod would (see the module doc). Returns
    the problems found, or None when this machine cannot run it."""
    import shutil
    import tempfile
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    problems = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path) as archive:
        index = json.loads(archive.extractfile("index.json").read())
        blob = lambda d: archive.extractfile("blobs/sha256/" + d.split(":", 1)[1]).read()  # noqa
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        root = os.path.join(tmp, "rootfs")
        os.mkdir(root)
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as t:
                t.extractall(root, filter="tar") if sys.version_info >= (3, 12) else t.extractall(root)
        for d in ("dev", "proc"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        env = " ".join(config["config"]["Env"])
        init = " ".join(config["config"]["Entrypoint"])
        run = (f"env -i {env} chroot {root} {init}")
        script = f"""set -e
mount --make-rprivate /
mount --rbind /dev {root}/dev
mount -t tmpfs tmpfs {root}/dev/shm
mount -t proc proc {root}/proc
{run} 2>&1
{root}/usr/sbin/xtables-nft-multi iptables-nft-save -t nat > {tmp}/nft 2>/dev/null || true
cat /proc/net/ip_tables_names > {tmp}/legacy-tables
{run} --backend legacy 2>&1
{run} --remove 2>&1
(env -i {env} chroot {root} iptables-nft-save; env -i {env} chroot {root} iptables-legacy-save) > {tmp}/after 2>&1
"""
        out = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", script],
                             capture_output=True, text=True)
        said = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
        if out.returncode != 0:
            return [f"init image: running init failed ({out.returncode}): {said.strip()}"]
        read = lambda name: open(os.path.join(tmp, name)).read()  # noqa: E731
        if "installed Weir's interception rules (nft back end)" not in said:
            problems.append(f"init image: auto did not install with nft: {said.strip()}")
        if "--uid-owner 1337" not in read("nft"):
            problems.append("init image: the nft rules do not exempt uid 1337")
        if read("legacy-tables").strip():
            problems.append(f"init image: looking left legacy tables: {read('legacy-tables')}")
        if "(legacy back end)" not in said:
            problems.append(f"init image: the legacy back end did not install: {said.strip()}")
        if "removed Weir's interception rules (nft and legacy back end)" not in said:
            problems.append(f"init image: --remove did not remove both: {said.strip()}")
        if "WEIR_" in read("after"):
            problems.append(f"init image: rules left after --remove:\n{read('after')}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", help="folder of the static binaries")
    parser.add_argument("--out", help="folder to write the archives to")
    parser.add_argument("--check", help="check the archives in this folder")
    args = parser.parse_args()
    table = images()
    folder = args.check or args.out
    if not folder or (args.out and not args.bin):
        parser.error("give --bin and --out, or --check")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for image in table:
            write_archive(image, rootfs(image, args.bin), args.out)
    failed = False
    for image in table:
        path = os.path.join(folder, image["archive"] + ".tar")
        problems = check(path, image) if os.path.exists(path) else ["missing"]
        if image.get("iptables") and not problems:
            ran = smoke_init(path)
            if ran is None:
                print("SKIPPED running the init image: needs root and unshare (util-linux)")
            elif not ran:
                print("init image runs: installs (nft, no legacy table left; legacy on request) "
                      "and removes its rules")
            problems += ran or []
        for problem in problems:
            print(f"FAIL {image['archive']}.tar: {problem}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
