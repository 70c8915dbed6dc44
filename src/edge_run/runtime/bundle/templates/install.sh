#!/bin/sh
# Installs this edge-run bundle offline: no network, no compiler. Written by `edge-run bundle`.
#   sh install.sh            checks the CPU, the sha256 of every file, then installs into $EDGE_RUN_PREFIX
#   sh install.sh --worker [--host ADDR --allow ADDR/CIDR ...] [--port N]
#                            the same, and sets this board up as a cluster worker: edge-run-worker.service
#                            (`edge-run worker --host ADDR --port N --allow ...`, default 127.0.0.1:50052) installed
#                            in $EDGE_RUN_UNIT_DIR and enabled. A --host other than loopback needs --allow (llama.cpp's
#                            RPC protocol has no authentication: only the listed hosts get through)
# Environment (all optional):
#   EDGE_RUN_PREFIX          where to install (default /opt/edge-run): venv/, bin/edge-run, models/, edge-run.service,
#                            edge-run-worker.service (an absolute path of letters, digits and . _ / + -)
#   EDGE_RUN_UNIT_DIR        where --worker installs its unit (default /etc/systemd/system)
#   EDGE_RUN_PYTHON          the Python to build the venv with (default pythonX.Y, else python3 if it is X.Y)
#   EDGE_RUN_CPUINFO         the cpuinfo file to check (default /proc/cpuinfo)
#   EDGE_RUN_MACHINE         the machine name to check (default: uname -m)
#   EDGE_RUN_CHECK_ONLY=1    stop after the checks
#   EDGE_RUN_SKIP_CPU_CHECK=1  install even on a CPU without the baseline's features (it will die with SIGILL)
set -eu

# The bundle's values, each one single-quoted literal (edge_run.core.quoting.sh_quote): nothing below pastes a
# value into code, every use is a double-quoted "$VARIABLE".
@VARIABLES@

HERE=$(cd -- "$(dirname -- "$0")" && pwd)
PREFIX=${EDGE_RUN_PREFIX:-/opt/edge-run}
CPUINFO=${EDGE_RUN_CPUINFO:-/proc/cpuinfo}
MACHINE=${EDGE_RUN_MACHINE:-$(uname -m)}

fail() { code=$1; shift; printf 'error: %s\n' "$*" >&2; exit "$code"; }
shown() { printf '%s' "$1" | tr -c 'A-Za-z0-9._/:+,=-' '?' | cut -c 1-60; }  # a value, for a one-line error

# ---- 0. options: each value checked against a character set that needs no escaping in sh, sed or systemd
WORKER=0
WORKER_HOST=127.0.0.1
WORKER_PORT=50052
WORKER_ALLOW=""
WORKER_ONLY=""
while [ $# -gt 0 ]; do
    opt=$1
    case "$opt" in
        --worker) WORKER=1; shift; continue ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d'; exit 0 ;;
        --host|--port|--allow) [ $# -ge 2 ] || fail 2 "$opt needs a value"
            value=$2; shift 2; WORKER_ONLY=$opt ;;
        --host=*|--port=*|--allow=*) value=${opt#*=}; opt=${opt%%=*}; shift; WORKER_ONLY=$opt ;;
        *) fail 2 "unknown option $(shown "$opt"). sh install.sh [--worker [--host ADDR] [--port N] [--allow NET]...]" ;;
    esac
    case "$opt" in
        --host) case "$value" in
                ""|-*|*[!A-Za-z0-9.:-]*) fail 2 "--host $(shown "$value") is not an address." \
                    "Use an IP address of this board (e.g. 10.0.0.2) or its host name" ;;
            esac
            [ "${#value}" -le 253 ] || fail 2 "--host is ${#value} characters long. Use an IP address"
            WORKER_HOST=$value ;;
        --port) case "$value" in
                ""|*[!0-9]*) fail 2 "--port $(shown "$value") is not a TCP port. Choose 1-65535" ;;
            esac
            while case "$value" in 0?*) true ;; *) false ;; esac; do value=${value#0}; done
            if [ "${#value}" -gt 5 ] || [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
                fail 2 "--port $(shown "$value") is not a TCP port. Choose 1-65535"
            fi
            WORKER_PORT=$value ;;
        --allow) case "$value" in
                ""|/*|*[!0-9A-Fa-f.:/]*) fail 2 "--allow $(shown "$value") is not an address or network." \
                    "Write an address (10.0.0.5) or a CIDR network (10.0.0.0/24)" ;;
            esac
            [ "${#value}" -le 49 ] || fail 2 "--allow is ${#value} characters long. Write 10.0.0.0/24"
            WORKER_ALLOW="$WORKER_ALLOW $value" ;;
    esac
done
if [ "$WORKER" = 0 ] && [ -n "$WORKER_ONLY" ]; then
    fail 2 "$WORKER_ONLY sets up a cluster worker. Add --worker"
fi
case "$WORKER_HOST" in
    127.*|::1|localhost) ;;
    *) [ -n "$WORKER_ALLOW" ] || fail 2 "--host $WORKER_HOST exposes the worker, and llama.cpp's RPC protocol has no" \
        "authentication. Name the hosts that may connect: --allow 10.0.0.2 or --allow 10.0.0.0/24" ;;
esac

has_all() {  # has_all "needed words" "present words"
    for w in $1; do
        case " $2 " in *" $w "*) ;; *) return 1 ;; esac
    done
    return 0
}

# ---- 1. the CPU: 64-bit ARM with every feature the baseline was compiled for (on every core)
[ "$MACHINE" = aarch64 ] || fail 3 "this bundle is for 64-bit ARM (aarch64) but this machine is $MACHINE." \
    "Install a 64-bit OS (Raspberry Pi OS 64-bit) or bundle for this machine's profile"
case "$PREFIX" in
    /*) ;;
    *) fail 2 "EDGE_RUN_PREFIX must be an absolute path, not $PREFIX" ;;
esac
case "$PREFIX" in
    *[!A-Za-z0-9._/+-]*) fail 2 "EDGE_RUN_PREFIX may hold only letters, digits and . _ / + - (it goes into a" \
        "systemd unit), not $PREFIX" ;;
esac
case "$ARTIFACT" in
    ""|.|..|*/*) fail 5 "this bundle names no plain model file. copy the bundle again" ;;
esac
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
    printf '%s\n' "$BASELINE_TABLE" | while IFS='|' read -r b feats profiles; do
        [ -n "$b" ] || continue
        if has_all "$feats" "$PRESENT"; then printf '%s|%s\n' "$b" "$profiles"; break; fi
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
[ -z "$bad" ] || fail 5 "$(printf '%s\n' "$bad" | head -n 1 | cut -d: -f1) does not match SHA256SUMS (the copy is corrupt or" \
    "was changed). copy the bundle again"
for w in wheels/*.whl; do
    grep -q "  $w\$" SHA256SUMS || fail 5 "$w is not listed in SHA256SUMS. remove it or copy the bundle again"
done

if [ "${EDGE_RUN_CHECK_ONLY:-0}" = 1 ]; then
    printf 'ok: CPU has %s (%s); every file matches SHA256SUMS\n' "$FEATURES" "$BASELINE"
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
# the dynamic loader's own answer (its search path, not a guessed list of folders)
"$PY" -c 'import ctypes; ctypes.CDLL("libstdc++.so.6")' 2>/dev/null || fail 4 "this system has no" \
    "libstdc++.so.6, which llama.cpp and onnxruntime need. install the libstdc++6 package (Raspberry Pi OS has it)"
if [ -n "$WORKER_ALLOW" ]; then  # the worker's own rule (ipaddress.ip_network), before anything is installed
    set -f
    # shellcheck disable=SC2086
    bad=$("$PY" -c 'import ipaddress, sys
for a in sys.argv[1:]:
    try:
        ipaddress.ip_network(a, strict=False)
    except ValueError:
        print(a)
        break' $WORKER_ALLOW) || bad="?"
    set +f
    [ -z "$bad" ] || fail 2 "--allow $(shown "$bad") is not an address or network." \
        "Write an address (10.0.0.5) or a CIDR network (10.0.0.0/24)"
fi
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
# only ExecStart= holds @PREFIX@ (the model's name in it is escaped: no raw at sign); PREFIX was checked above
sed "/^ExecStart=/s#@PREFIX@#$PREFIX#g" edge-run.service > "$PREFIX/edge-run.service"
printf 'installed edge-run for %s (%s) in %s\n' "$PROFILE" "$BASELINE" "$PREFIX"
printf 'try:   %s run %s -p %s\n' "$PREFIX/bin/edge-run" "$PREFIX/models/$ARTIFACT_SH" "'The capital of France is'"
printf 'serve: sudo cp %s /etc/systemd/system/ && sudo systemctl enable --now edge-run\n' "$PREFIX/edge-run.service"
[ "$WORKER" = 1 ] || exit 0

# ---- 5. --worker: the worker's unit, every value one double-quoted systemd word (checked in 0: no quote,
# backslash, space, % or $ can be in them), installed and enabled
ARGS="--host \"$WORKER_HOST\" --port \"$WORKER_PORT\""
set -f
for a in $WORKER_ALLOW; do ARGS="$ARGS --allow \"$a\""; done
set +f
sed -e "/^ExecStart=/s#@PREFIX@#$PREFIX#g" -e "/^ExecStart=/s#@WORKER_ARGS@#$ARGS#" edge-run-worker.service \
    > "$PREFIX/edge-run-worker.service"
UNIT_DIR=${EDGE_RUN_UNIT_DIR:-/etc/systemd/system}
{ mkdir -p "$UNIT_DIR" && cp "$PREFIX/edge-run-worker.service" "$UNIT_DIR/"; } 2>/dev/null || fail 4 "cannot write" \
    "$UNIT_DIR/edge-run-worker.service. run as root (sudo sh install.sh --worker ...)"
state=""
if command -v systemctl >/dev/null 2>&1; then state=$(systemctl is-system-running 2>/dev/null) || true; fi
case "$state" in
    ""|offline|unknown)
        printf 'worker: %s installed, but systemd is not running here; start the worker with: %s worker %s\n' \
            "$UNIT_DIR/edge-run-worker.service" "$PREFIX/bin/edge-run" "$(printf '%s' "$ARGS" | tr -d '"')" ;;
    *)
        { systemctl daemon-reload && systemctl enable edge-run-worker.service && \
            systemctl restart edge-run-worker.service; } || fail 4 "systemctl could not enable edge-run-worker." \
            "see: journalctl -u edge-run-worker"
        printf 'worker: edge-run-worker enabled and started, listening on %s:%s (allowed:%s)\n' "$WORKER_HOST" \
            "$WORKER_PORT" "${WORKER_ALLOW:- loopback only}" ;;
esac
