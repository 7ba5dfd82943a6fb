#!/usr/bin/env bash
# Makes the anchors' virtual environments, OUTSIDE the repository, for benchmarks/suite.py:
#   $FEDTAB_ANCHOR_VENVS/synthcity   synthcity 0.2.12 (TabDDPM) on the main environment's torch 2.13
#   $FEDTAB_ANCHOR_VENVS/smartnoise  smartnoise-synth 1.0.8 (DPCTGAN, MST, AIM) with its own opacus 0.14
# (default /work/venvs). Run from anywhere, with the main environment's python 3.11 (torch 2.13 and
# fedtab's dependencies installed) as `python`:   bash benchmarks/anchors/setup_venvs.sh
# Idempotent: an environment that already imports its anchor is left as it is.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="${FEDTAB_ANCHOR_VENVS:-/work/venvs}"
PY="${PYTHON:-python}"
mkdir -p "$VENVS"
lock() { grep -v '^#' "$1"; }

# synthcity pins torch<2.3, networkx<3 and ~40 packages TabDDPM never uses. It is installed without
# dependencies into a venv that sees the main environment (torch 2.13, numpy, pandas, opacus), plus
# the exact set of packages its import chain needs (synthcity-lock.txt, also --no-deps, so no
# resolver can swap torch). No CPU torchvision 0.28 exists on PyPI; run_method.py then uses
# _torchvision_stub.py (TabDDPM never calls torchvision).
if ! "$VENVS/synthcity/bin/python" -c "import synthcity" 2>/dev/null; then
  "$PY" -m venv --system-site-packages "$VENVS/synthcity"
  "$VENVS/synthcity/bin/pip" install --no-deps -r <(lock "$HERE/synthcity-lock.txt")
fi

# smartnoise-synth pins opacus<0.15 (fedtab needs opacus 1.6): a plain venv of its own, torch 2.13
# first (the CPU build), then its locked dependency set.
if ! "$VENVS/smartnoise/bin/python" -c "import snsynth" 2>/dev/null; then
  "$PY" -m venv "$VENVS/smartnoise"
  "$VENVS/smartnoise/bin/pip" install torch==2.13.0
  "$VENVS/smartnoise/bin/pip" install --no-deps -r <(lock "$HERE/smartnoise-lock.txt")
fi

# Check: each environment imports what suite.py will run there.
"$VENVS/synthcity/bin/python" - <<PY
import sys; sys.path.insert(0, "$HERE")
try:
    import torchvision  # noqa: F401
except Exception:
    import _torchvision_stub  # noqa: F401
from synthcity.plugins.generic.plugin_ddpm import TabDDPMPlugin  # noqa: F401
import torch; print("synthcity OK, torch", torch.__version__)
PY
"$VENVS/smartnoise/bin/python" -c "import snsynth, opacus, torch; print('smartnoise OK, opacus', opacus.__version__, 'torch', torch.__version__)"
