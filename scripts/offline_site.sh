# Sourced by the GPU scripts: with $wheels set (a folder of wheels), install them into a private target named
# after $site and put it on PYTHONPATH (nothing outside it changes); then put this checkout on PYTHONPATH.
python=${PYTHON:-python3}
if [[ -n "$wheels" ]]; then
  target="${TMPDIR:-/tmp}/$site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$wheels"/*.whl
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
