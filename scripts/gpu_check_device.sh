#!/usr/bin/env bash
# The GPU check as one device call, run verbatim: `bash scripts/gpu_check_device.sh --mode gpu`
# (the rehearsal: --mode cpu; docs/gpu-check.md). Installs the carried wheels ($WHEELS,
# default .whl/server) into a fresh venv whose .pth adds python3's own site-packages after
# its own (python3 is itself a venv, so --system-site-packages would miss torch), then runs
# both parts into $OUT (remaining arguments go to gpu_check), the console in check.log.
# Without the wheels the engine part still runs on python3. Exit status: gpu_check's.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${OUT:?OUT must name the folder whose files come back}"
export PYTHONUNBUFFERED=1 PYTHONPATH=scripts:model_repository/ofa_visual_entailment/1
wheels="${WHEELS:-.whl/server}"
venv="$(mktemp -d /tmp/ofa-ve-device.XXXXXX)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT

install_wheels() {
  compgen -G "$wheels/*.whl" > /dev/null || { echo "no wheels in $wheels"; return 1; }
  python3 -m venv --without-pip "$venv" || return 1
  local site
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    || return 1
  python3 -c 'import sys
for p in sys.path:
    if p.endswith(("site-packages", "dist-packages")):
        print(f"import site; site.addsitedir({p!r})")' > "$site/zz_device_site.pth" || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$site" "$wheels"/*.whl
}

{
  echo "gpu_check_device.sh: python3 is $(command -v python3)"
  nvidia-smi || echo "nvidia-smi: not available here"
  python=python3
  started=$SECONDS
  if install_wheels; then
    python="$venv/bin/python"
    echo "gpu_check_device.sh: wheels installed in $((SECONDS - started)) s into $venv"
  else
    echo "gpu_check_device.sh: the wheels could not be installed; the server part will be skipped"
  fi
  "$python" -m ofa_ve_bench.gpu_check --part all --out "$OUT" "$@"
} 2>&1 | tee "$OUT/check.log"
