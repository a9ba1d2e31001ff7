#!/usr/bin/env bash
# Install what mailingest needs, only where it is missing: Debian packages, a virtualenv with
# the package and its development tools. Safe to run again. Usage: scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"

# Debian packages the daemon or the test suite use (binary → space-separated packages).
declare -A debs=(
  [dovecot]=dovecot-imapd
  [openssl]=openssl  # the IMAP tests make a self-signed certificate for Dovecot
  # OCR of scans and photos; the language packs the OCR extractor uses when installed.
  [tesseract]="tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu tesseract-ocr-fra tesseract-ocr-spa tesseract-ocr-ita tesseract-ocr-nld"
)

missing=()
for bin in "${!debs[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || { read -ra pkgs <<<"${debs[$bin]}"; missing+=("${pkgs[@]}"); }
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || echo "setup: apt-get update failed; trying with the cached package lists"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The tests run their own Dovecot; the packaged system service is not needed.
  if [ -d /run/systemd/system ]; then $sudo systemctl disable --now dovecot >/dev/null 2>&1 || true; fi
fi

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py=$candidate; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $py"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
echo "setup: installing mailingest and its development tools into $venv"
"$venv/bin/python" -m pip install -q -e '.[dev,bench]' 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c 'import mailingest, sqlmodel, aiosmtpd, pdfminer, lxml' \
  || { echo "setup: installation incomplete" >&2; exit 1; }
