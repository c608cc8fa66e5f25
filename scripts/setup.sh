#!/usr/bin/env bash
# Create .venv and install fibrosis with its pinned dependencies (works offline
# where the wheels lie on local disk; otherwise from the package index).
# Idempotent: re-running on a ready environment takes seconds.
# Prerequisites from the system (Debian/Ubuntu names): python3-venv, and for the report PDF
# the Pango text stack WeasyPrint uses: apt-get install libpango-1.0-0 libpangoft2-1.0-0
# fonts-dejavu-core (plus poppler-utils to run the PDF tests).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch/torchvision first, at the builds known to install here:
# x86_64 -> 2.14.1/0.29.1, aarch64 -> 2.9.1/0.24.1 (see README "Installation").
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *)             TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  "${PIP[@]}" "${TORCH[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
fi
.venv/bin/python -c "import torch, torchvision" # fail loudly if the install above failed

"${PIP[@]}" -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import fibrosis, pydicom, monai, albumentations, sklearn" # fail loudly
.venv/bin/python -c "import weasyprint" 2>/dev/null \
  || echo "warning: WeasyPrint cannot load Pango: install libpango-1.0-0 libpangoft2-1.0-0 for the report PDF" >&2
