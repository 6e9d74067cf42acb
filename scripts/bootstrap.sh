# Sourced by run.sh and test.sh: make .venv with Python 3.11 and install a
# requirements file into it (again only when the file changed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
  echo "Scanyard needs Python 3.11 or newer ($PYTHON is older)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv .venv
    else
      echo "Python's venv module is missing: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi

install_requirements() {
  local file=$1 stamp=".venv/.installed-$1"
  if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp.base" || ! cmp -s "$file" "$stamp"; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r "$file"
    cp "$file" "$stamp"
    cp requirements.txt "$stamp.base"
  fi
}
export PATH="$PWD/.venv/bin:$PATH"
