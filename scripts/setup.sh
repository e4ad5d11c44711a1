#!/usr/bin/env bash
# Installs this project's pinned Python dependencies, one way for every user:
# `make serve` / `make test` (into a virtualenv) and docker/Dockerfile (into the
# image's own Python, where Triton itself comes with the base image).
#
#   scripts/setup.sh [--venv DIR | --system] [--profile engine|serve|dev]
#
# Profiles: engine = what the model's Python-backend stub imports;
#           serve  = engine + tritonserver/perf_analyzer/tritonclient from PyPI + the
#                    ModelScope hub client (`make serve` downloads the model with it);
#           dev    = serve + the ModelScope reference, test and lint tools, the client SDK.
# In a virtualenv, the project's own packages are installed editable, in place:
# ofa_ve_engine (from the model folder), ofa_ve_ops and ofa_ve_bench (scripts/), and
# for dev the client SDK; so nothing needs sys.path edits. With --system (the
# container) only the pinned requirements are installed: Triton imports the engine
# from the model folder next to model.py.
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
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

case "$profile" in
  engine) reqs=("$root/requirements/engine.txt") ;;
  serve) reqs=("$root/requirements/engine.txt" "$root/requirements/triton.txt"
    "$root/requirements/hub.txt") ;;
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
for project in client/pyproject.toml scripts/pyproject.toml \
  model_repository/ofa_visual_entailment/1/pyproject.toml; do
  [[ -f "$root/$project" ]] && hashed+=("$root/$project")
done
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
if [[ -n "$venv" ]]; then
  editable=(-e "$root/model_repository/ofa_visual_entailment/1")
  [[ "$profile" != "engine" ]] && editable+=(-e "$root/scripts")
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps "${editable[@]}"
  if [[ "$profile" == "dev" ]]; then
    "$python" -m pip install --quiet --disable-pip-version-check -e "$root/client"
  fi
fi
echo "$want" > "$stamp"
echo "setup.sh: done"
