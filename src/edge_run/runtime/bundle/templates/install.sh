#!/bin/sh
# Installs this edge-run bundle offline: no network, no compiler. Written by `edge-run bundle`.
#   sh install.sh            checks the CPU, the sha256 of every file, then installs into $EDGE_RUN_PREFIX
# Environment (all optional):
#   EDGE_RUN_PREFIX          where to install (default /opt/edge-run): venv/, bin/edge-run, models/, edge-run.service
#   EDGE_RUN_PYTHON          the Python to build the venv with (default python@PYTHON@, else python3 if it is @PYTHON@)
#   EDGE_RUN_CPUINFO         the cpuinfo file to check (default /proc/cpuinfo)
#   EDGE_RUN_MACHINE         the machine name to check (default: uname -m)
#   EDGE_RUN_CHECK_ONLY=1    stop after the checks
#   EDGE_RUN_SKIP_CPU_CHECK=1  install even on a CPU without the baseline's features (it will die with SIGILL)
set -eu

BASELINE='@BASELINE@'
FEATURES='@FEATURES@'
PROFILE='@PROFILE@'
PYTHON_VERSION='@PYTHON@'
ARTIFACT='@ARTIFACT@'
REQUIREMENTS='@REQUIREMENTS@'
# baseline|features|profiles that build it: the suggestion when this board lacks a feature (highest first)
BASELINE_TABLE='@BASELINE_TABLE@'

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${EDGE_RUN_PREFIX:-/opt/edge-run}
CPUINFO=${EDGE_RUN_CPUINFO:-/proc/cpuinfo}
MACHINE=${EDGE_RUN_MACHINE:-$(uname -m)}

fail() { code=$1; shift; echo "error: $*" >&2; exit "$code"; }

has_all() {  # has_all "needed words" "present words"
    for w in $1; do
        case " $2 " in *" $w "*) ;; *) return 1 ;; esac
    done
    return 0
}

# ---- 1. the CPU: 64-bit ARM with every feature the baseline was compiled for (on every core)
[ "$MACHINE" = aarch64 ] || fail 3 "this bundle is for 64-bit ARM (aarch64) but this machine is $MACHINE." \
    "Install a 64-bit OS (Raspberry Pi OS 64-bit) or bundle for this machine's profile"
[ -r "$CPUINFO" ] || fail 3 "cannot read $CPUINFO to check the CPU. set EDGE_RUN_CPUINFO to a readable copy"
PRESENT=""
CORES=0
while IFS= read -r line; do
    case "$line" in
        Features*:*) CORES=$((CORES + 1))
            words=${line#*:}
            if [ "$CORES" = 1 ]; then PRESENT=$words; else
                common=""
                for w in $PRESENT; do case " $words " in *" $w "*) common="$common $w" ;; esac; done
                PRESENT=$common
            fi ;;
    esac
done < "$CPUINFO"
[ "$CORES" -gt 0 ] || fail 3 "$CPUINFO has no 'Features' line, so the CPU cannot be checked." \
    "Run this on the device, or set EDGE_RUN_CPUINFO to its /proc/cpuinfo"
MISSING=""
for f in $FEATURES; do
    case " $PRESENT " in *" $f "*) ;; *) MISSING="$MISSING $f" ;; esac
done
if [ -n "$MISSING" ] && [ "${EDGE_RUN_SKIP_CPU_CHECK:-0}" != 1 ]; then
    instead="no edge-run baseline (not even armv8-a)"
    echo "$BASELINE_TABLE" | while IFS='|' read -r b feats profiles; do
        [ -n "$b" ] || continue
        if has_all "$feats" "$PRESENT"; then echo "$b|$profiles"; break; fi
    done > "${TMPDIR:-/tmp}/edge-run-baseline.$$" || true
    if [ -s "${TMPDIR:-/tmp}/edge-run-baseline.$$" ]; then
        IFS='|' read -r b profiles < "${TMPDIR:-/tmp}/edge-run-baseline.$$"
        instead="the $b build instead: edge-run bundle ... --profile $profiles"
    fi
    rm -f "${TMPDIR:-/tmp}/edge-run-baseline.$$"
    fail 3 "this CPU lacks${MISSING}, which this bundle's $BASELINE build of llama.cpp (profile $PROFILE) needs" \
        "(it would die with SIGILL). bundle $instead"
fi

# ---- 2. every file against SHA256SUMS, and no wheel that SHA256SUMS does not list
cd "$HERE"
command -v sha256sum >/dev/null 2>&1 || fail 4 "sha256sum is not installed. install coreutils"
[ -f SHA256SUMS ] || fail 5 "SHA256SUMS is missing from the bundle. copy the whole bundle again"
if ! bad=$(sha256sum -c SHA256SUMS 2>/dev/null | grep -v ': OK$'); then bad=""; fi
[ -z "$bad" ] || fail 5 "$(echo "$bad" | head -n 1 | cut -d: -f1) does not match SHA256SUMS (the copy is corrupt or" \
    "was changed). copy the bundle again"
for w in wheels/*.whl; do
    grep -q "  $w\$" SHA256SUMS || fail 5 "$w is not listed in SHA256SUMS. remove it or copy the bundle again"
done

if [ "${EDGE_RUN_CHECK_ONLY:-0}" = 1 ]; then
    echo "ok: CPU has ${FEATURES} ($BASELINE); every file matches SHA256SUMS"
    exit 0
fi

# ---- 3. a venv with the wheelhouse, offline (pip runs from its own wheel: no ensurepip / python3-venv needed)
PY=${EDGE_RUN_PYTHON:-}
if [ -z "$PY" ]; then
    for c in "python$PYTHON_VERSION" python3; do
        if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
    done
fi
[ -n "$PY" ] || fail 3 "no python3 found. install Python $PYTHON_VERSION (Raspberry Pi OS ships it)"
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$PYTHON_VERSION" ] || fail 3 "this bundle's wheels are for Python $PYTHON_VERSION but $PY is $have." \
    "build the bundle with --python $have"
found=""
for d in /lib/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu /lib64 /usr/lib64 /lib /usr/lib; do
    if [ -e "$d/libstdc++.so.6" ]; then found=$d; break; fi
done
[ -n "$found" ] || fail 4 "this system has no libstdc++.so.6, which llama.cpp and onnxruntime need." \
    "install the libstdc++6 package (Raspberry Pi OS has it)"
PIP_WHEEL=$(ls wheels/pip-*.whl 2>/dev/null | head -n 1)
[ -n "$PIP_WHEEL" ] || fail 5 "the bundle has no pip wheel. copy the whole bundle again"

mkdir -p "$PREFIX" || fail 4 "cannot create $PREFIX. run as root or set EDGE_RUN_PREFIX to a writable folder"
VENV="$PREFIX/venv"
rm -rf "$VENV"
trap 'rm -rf "$VENV"' EXIT
"$PY" -m venv --without-pip "$VENV" || fail 4 "$PY -m venv failed for $VENV"
set -f  # REQUIREMENTS holds brackets (edge-run[serve]): no globbing
# shellcheck disable=SC2086
"$VENV/bin/python" "$HERE/$PIP_WHEEL/pip" install --isolated --quiet --no-index --no-cache-dir \
    --disable-pip-version-check \
    --find-links "$HERE/wheels" pip $REQUIREMENTS || fail 4 "pip could not install the wheelhouse into $VENV"
trap - EXIT
set +f

# ---- 4. the model, a launcher, the systemd unit
mkdir -p "$PREFIX/models" "$PREFIX/bin"
rm -rf "$PREFIX/models/$ARTIFACT" "$PREFIX/models/$ARTIFACT.manifest.json"
cp -R "models/$ARTIFACT" "$PREFIX/models/"
[ ! -f "models/$ARTIFACT.manifest.json" ] || cp "models/$ARTIFACT.manifest.json" "$PREFIX/models/"
ln -sf "$VENV/bin/edge-run" "$PREFIX/bin/edge-run"
sed "s#@PREFIX@#$PREFIX#g" edge-run.service > "$PREFIX/edge-run.service"
echo "installed edge-run for $PROFILE ($BASELINE) in $PREFIX"
echo "try:   $PREFIX/bin/edge-run run $PREFIX/models/$ARTIFACT -p 'The capital of France is'"
echo "serve: sudo cp $PREFIX/edge-run.service /etc/systemd/system/ && sudo systemctl enable --now edge-run"
