#!/usr/bin/env bash
# CI (called by .ci/run after the tests with the wheel it built): check the wheel's tag and contents, install it into
# a fresh virtual environment and smoke test it there. The venv does not see the system's site-packages (where
# .ci/run installed the same wheel); a plain path line lends it the system torch/numpy without running their .pth
# hooks (so an editable pydistill's import hook stays out too), and only the venv's own pydistill is importable.
# Try it locally: FORCE_ONLY_CPU=1 python -m build --wheel --no-isolation --outdir /tmp/dist . && .ci/wheel.sh /tmp/dist/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
whl="$(realpath "${1:?usage: .ci/wheel.sh PATH/TO/pydistill-*.whl}")"
work="$(mktemp -d)"
tag="$(python -c "import torch; mm = ''.join(torch.__version__.split('+')[0].split('.')[:2]); print(f'+pt{mm}')")"
echo "wheel $(basename "$whl")"
case "$(basename "$whl")" in *"$tag"*) ;; *) echo "wheel name lacks the torch tag $tag"; exit 1 ;; esac
PYDISTILL_WHEEL="$whl" python -m pytest -q tests/test_wheel.py

python -m venv "$work/venv"
venv_site="$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
python -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])" | sort -u \
  > "$venv_site/_system_packages.pth"
"$work/venv/bin/python" -m pip install -q --no-deps "$whl"
(cd "$work" && env -u PYTHONPATH "$work/venv/bin/python" "$OLDPWD/.ci/smoke_wheel.py")
rm -rf "$work"
