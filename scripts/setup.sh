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
# Progress: one `setup.sh [n/N]` line per phase, and pip's own output (what it
# collects and downloads, with its progress bars) for the pinned requirements, the
# long phase (torch's wheels are several GB on a first install).
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

# The phases of an install, each announced as `setup.sh [n/N] ...`.
phases=2
[[ -n "$venv" ]] && phases=3
[[ -n "$venv" && ! -x "$venv/bin/python" ]] && phases=4
phase=0
say_phase() {
  phase=$((phase + 1))
  echo "setup.sh [$phase/$phases] $*"
}

if [[ -n "$venv" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    say_phase "creating virtualenv $venv"
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
say_phase "upgrading pip"
"$python" -m pip install --quiet --disable-pip-version-check --upgrade pip
say_phase "installing the pinned requirements (${reqs[*]#"$root/"}): on a first install" \
  "several GB of wheels (torch), minutes; pip shows each download"
args=()
for r in "${reqs[@]}"; do args+=(-r "$r"); done
"$python" -m pip install --disable-pip-version-check "${args[@]}"
if [[ -n "$venv" ]]; then
  say_phase "installing the project's own packages, editable (in place)"
  # Why PYTHONWARNINGS: the pyproject.toml files declare no package root
  # (`package-dir = {"" = "."}`), so setuptools installs their packages editable
  # through a meta-path finder that maps each package name to its folder, and prints
  # an "Editable installation" box (its InformationOnly warning) for each. With a
  # root declared it would write a .pth that puts the whole folder on sys.path
  # instead: for the engine, the version folder, making its model.py importable as
  # `model` and putting the checkout's engine on the path of every process of the
  # virtualenv, the tritonserver's stubs serving another repository included. The
  # finder is the right strategy; only its notice is filtered, and only here.
  editable=(-e "$root/model_repository/ofa_visual_entailment/1")
  [[ "$profile" != "engine" ]] && editable+=(-e "$root/scripts")
  PYTHONWARNINGS="ignore:Editable installation" \
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps "${editable[@]}"
  if [[ "$profile" == "dev" ]]; then
    PYTHONWARNINGS="ignore:Editable installation" \
      "$python" -m pip install --quiet --disable-pip-version-check -e "$root/client"
  fi
fi
echo "$want" > "$stamp"
echo "setup.sh: done"
