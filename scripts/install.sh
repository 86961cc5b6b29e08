#!/usr/bin/env bash
# Create a virtual environment and install morl into it, fast: uv where it can be had, pip where not.
#
#   scripts/install.sh VENV TORCH [EXTRAS] [LOCK]
#
# VENV    the environment to create (kept if it already exists)
# TORCH   the torch requirement, e.g. "torch==2.13.0" (the CPU wheel these machines carry) or "torch" on a GPU machine
# EXTRAS  morl's extras, e.g. "test,docs" (empty: morl alone)
# LOCK    a constraints file pinning every other package (requirements/test.lock); empty: the newest releases that
#         pyproject.toml allows (make test-latest)
#
# uv is used from PATH, or else installed into VENV with pip; if neither works, pip does everything (slower, same
# result). UV=none behaves as a machine without uv on PATH; UV=pip uses pip throughout. Local wheel folders that pip is configured with (PIP_FIND_LINKS, pip's global.find-links) are passed to uv
# too, so a torch wheel that lies on disk is taken from there instead of downloaded.
set -euo pipefail
venv=$1
torch=$2
extras=${3:-}
lock=${4:-}
python=${PYTHON:-python3}
target="."
[[ -n "$extras" ]] && target=".[$extras]"
constraints=(--upgrade)  # no lock: the newest releases allowed, even where older ones are installed
[[ -n "$lock" ]] && constraints=(-c "$lock")

links=${PIP_FIND_LINKS:-$("$python" -m pip config get global.find-links 2>/dev/null || true)}
find_links=()
for dir in $links; do
  [[ -d "$dir" ]] && find_links+=(--find-links "$dir")
done

uv=${UV:-$(command -v uv || true)}
if [[ "$uv" == none ]]; then uv=""; fi  # UV=none: as on a machine without uv on PATH (uv is bootstrapped with pip)
if [[ -z "$uv" || "$uv" == pip ]]; then
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  if [[ "$uv" != pip ]] && "$venv/bin/python" -m pip install -q uv 2>/dev/null; then
    uv="$venv/bin/uv"
  else
    uv=""  # UV=pip, or uv could not be had: pip does everything
  fi
elif [[ ! -x "$venv/bin/python" ]]; then
  "$uv" venv -q --python "$python" "$venv"
fi

if [[ -n "$uv" ]]; then
  "$uv" pip install -q --python "$venv/bin/python" "${find_links[@]}" "${constraints[@]}" "$torch" -e "$target"
else
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "${constraints[@]}" "$torch" -e "$target"
fi
