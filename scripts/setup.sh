#!/usr/bin/env bash
# Installs this project's pinned Python dependencies, one way for every user:
# `make serve` / `make test` (into a virtualenv) and docker/Dockerfile (into the
# image's own Python, where Triton itself comes with the base image).
#
#   scripts/setup.sh [--venv DIR | --system] [--profile engine|serve|dev]
#
# Profiles: engine = what the model's Python-backend stub imports;
#           serve  = engine + tritonserver/perf_analyzer/tritonclient from PyPI;
#           dev    = serve + the ModelScope reference, test and lint tools, the client SDK.
# Re-running is cheap: a stamp of the requirement files' hash skips pip when nothing changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
profile="dev"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --system) venv=""; shift ;;
    --profile) profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

case "$profile" in
  engine) reqs=("$root/requirements/engine.txt") ;;
  serve) reqs=("$root/requirements/engine.txt" "$root/requirements/triton.txt") ;;
  dev) reqs=("$root/requirements/dev.txt") ;;
  *) echo "setup.sh: unknown profile '$profile' (engine, serve or dev)" >&2; exit 2 ;;
esac

if [[ -n "$venv" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup.sh: creating virtualenv $venv"
    python3 -m venv "$venv"
  fi
  python="$venv/bin/python"
else
  python="$(command -v python3)"
fi

stamp_dir="${venv:-$root/.cache}"
mkdir -p "$stamp_dir"
stamp="$stamp_dir/.setup-$profile.sha256"
hashed=("$root"/requirements/*.txt)
[[ -f "$root/client/pyproject.toml" ]] && hashed+=("$root/client/pyproject.toml")
want="$(cat "${hashed[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup.sh: $profile dependencies already installed ($python)"
  exit 0
fi

echo "setup.sh: installing $profile dependencies into $python"
"$python" -m pip install --quiet --disable-pip-version-check --upgrade pip
args=()
for r in "${reqs[@]}"; do args+=(-r "$r"); done
"$python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
if [[ "$profile" == "dev" && -f "$root/client/pyproject.toml" ]]; then
  "$python" -m pip install --quiet --disable-pip-version-check -e "$root/client"
fi
echo "$want" > "$stamp"
echo "setup.sh: done"
