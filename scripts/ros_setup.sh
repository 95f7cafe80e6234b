#!/usr/bin/env bash
# Install ROS 2 (Kilted, pip wheels) into a virtual environment and build + install this repository's
# two ROS packages into it with CMake: clustvit_msgs (the messages) and clustvit_ros (launch/config
# files, executables in lib/clustvit_ros/). No ROS apt packages, no `source setup.bash`.
#
#   scripts/ros_setup.sh [VENV]        VENV: a venv that already has requirements.txt (default: .venv)
#
# clustvit_ros is installed in development mode (CMake option CLUSTVIT_DEVELOP): a .pth file puts this
# source tree on the venv's sys.path, so the venv imports clustvit_ros and clustvit_core from the
# working tree (edits apply at once, from any folder) instead of from copies.
# Safe to run repeatedly: pip installs, the fixes to the ROS wheels and a clean CMake configure run only
# when the packages' CMakeLists.txt, package.xml or .msg files, the requirements files or this script
# changed (stamp file in the build folder); otherwise only the incremental build + install and the
# smoke check run. Environment: CLUSTVIT_ROS_FORCE=1 redoes everything; JOBS=N sets the build parallelism.
set -euo pipefail

die() { echo "ros_setup.sh: error: $*" >&2; exit 1; }
say() { echo "ros_setup.sh: $*"; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_ARG=${1:-$ROOT/.venv}
[ $# -le 1 ] || die "usage: scripts/ros_setup.sh [VENV]"
[ -d "$VENV_ARG" ] || die "no virtual environment at '$VENV_ARG' (create it first, e.g. 'make setup' or 'python3 -m venv $VENV_ARG')"
VENV=$(cd "$VENV_ARG" && pwd -P)
PY=$VENV/bin/python
[ -x "$PY" ] && [ -f "$VENV/pyvenv.cfg" ] || die "'$VENV' is not a virtual environment (no bin/python or pyvenv.cfg)"

for tool in cmake c++ cc; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: install cmake (>= 3.20) and a C/C++ compiler (e.g. apt-get install cmake g++)"
done
if command -v ninja >/dev/null 2>&1; then GENERATOR=Ninja
elif command -v make >/dev/null 2>&1; then GENERATOR="Unix Makefiles"
else die "neither 'ninja' nor 'make' found: install one (e.g. apt-get install make)"; fi

# In build order. vision_msgs (LabelInfo, VisionClass: what the node publishes on ~/label_info) comes from a
# ROS install where there is one; from pip wheels there is none, so a wire-compatible stand-in
# (ros/vision_msgs) is built into the venv.
PACKAGES=(clustvit_msgs clustvit_ros)
if ! "$PY" -c 'import vision_msgs.msg' >/dev/null 2>&1 || [ -f "$VENV/share/vision_msgs/clustvit_standin.xml" ]; then
  PACKAGES=(vision_msgs "${PACKAGES[@]}")
fi
pkg_dir() { if [ "$1" = vision_msgs ]; then echo "$ROOT/ros/vision_msgs"; else echo "$ROOT/$1"; fi; }
# One build folder per venv (the CMake caches hold the venv's interpreter and install prefix), with one
# subfolder per package.
VENV_KEY=$(printf '%s' "$VENV" | sha256sum | cut -c1-8)
BUILD=$ROOT/build/ros/$(basename "$VENV")-$VENV_KEY
LOG=$BUILD/ros_setup.log
STAMP=$BUILD/ros_setup.stamp

# run DESCRIPTION CMD...: run with output in the log; on failure show the log's tail and stop.
run() {
  local what=$1; shift
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 25 "$LOG" >&2
    die "$what failed (full log: $LOG)"
  fi
}

# Everything that decides what the pip installs, the wheel fixes and the configure step produce.
state_hash() {
  {
    printf '%s\n' "$VENV" "$("$PY" -c 'import sys; print(sys.version)' 2>&1)"
    (cd "$ROOT" && find clustvit_msgs ros -type f -name '*.msg' | LC_ALL=C sort | xargs sha256sum)
    for pkg in "${PACKAGES[@]}"; do (cd "$(pkg_dir "$pkg")" && sha256sum CMakeLists.txt package.xml); done
    (cd "$ROOT" && sha256sum requirements.txt requirements-ros.txt scripts/ros_setup.sh)
  } | sha256sum | cut -c1-64
}

# The messages import, and clustvit_ros / clustvit_core come from this source tree (not from copies),
# seen from a folder outside it.
smoke() {
  (cd "$BUILD" && "$PY" - "$ROOT" <<'PYEOF'
import pathlib
import sys

from clustvit_msgs.msg import SegmentationStats
from vision_msgs.msg import LabelInfo, VisionClass

import clustvit_core
import clustvit_ros

SegmentationStats()
LabelInfo(class_map=[VisionClass(class_id=0, class_name="x")])
root = pathlib.Path(sys.argv[1]).resolve()
for module in (clustvit_core, clustvit_ros):
    if pathlib.Path(module.__file__).resolve().parent.parent != root:
        sys.exit(f"{module.__name__} is imported from {module.__file__}, not from {root}")
PYEOF
  ) >>"$LOG" 2>&1
}

export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"   # fix 1: rosidl_typesupport_c is found
export PATH="$VENV/bin:$PATH"
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
HASH=$(state_hash)
start=$SECONDS

# colcon must not take build folders (rosidl writes CMakeLists.txt files there) or the venv (the ROS
# wheels' share/*/package.xml) for packages of a workspace this repository sits in.
mkdir -p "$ROOT/build"
touch "$ROOT/build/COLCON_IGNORE" "$VENV/COLCON_IGNORE"

if [ "${CLUSTVIT_ROS_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
   && [ -f "$BUILD/clustvit_ros/CMakeCache.txt" ]; then
  mkdir -p "$BUILD" && : >"$LOG"
  say "up to date ($VENV); incremental build + install"
else
  rm -rf "$BUILD"  # a clean configure (also drops the build folders of older layouts)
  mkdir -p "$BUILD" && : >"$LOG"
  "$PY" -c 'import numpy' >/dev/null 2>&1 \
    || die "numpy is not importable in $VENV: install the project's requirements first ($PY -m pip install -r requirements.txt)"

  say "pip install -r requirements-ros.txt into $VENV"
  # requirements.txt as constraints: keeps numpy<2.3 and OpenCV<5 (cv_bridge) and installs nothing else.
  run "pip install" "$PY" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/requirements-ros.txt" -c "$ROOT/requirements.txt"

  # Fix 2: the wheels' exported CMake targets name the Python/numpy include folders of the machine
  # they were built on (/opt/python/cp311-cp311/...): point them at this venv's.
  say "pointing the wheels' CMake files at this venv's Python and numpy headers"
  run "rewriting include paths in $VENV/share/**/*.cmake" "$PY" - "$VENV/share" <<'PYEOF'
import pathlib
import re
import sys
import sysconfig

import numpy

share = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
if not (pathlib.Path(py_inc) / "Python.h").is_file():
    sys.exit(f"Python.h not found in {py_inc}: install the Python development headers (e.g. python3-dev)")
prop = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+")([^"]*)(")')


def fix_entry(entry):
    if re.search(r"/include/python3\.\d+$", entry):
        return py_inc
    if re.search(r"/numpy/(_core|core)/include$", entry):
        return np_inc
    return entry


changed = 0
for path in sorted(share.glob("**/*.cmake")):
    text = path.read_text()
    if "INTERFACE_INCLUDE_DIRECTORIES" not in text:
        continue
    new = prop.sub(lambda m: m[1] + ";".join(fix_entry(e) for e in m[2].split(";")) + m[3], text)
    if new != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        changed += 1
print(f"rewrote {changed} file(s); python include {py_inc}; numpy include {np_inc}")
PYEOF
  tail -n 1 "$LOG" | sed 's/^/ros_setup.sh:   /'

  say "configuring ${PACKAGES[*]} (build folder $BUILD)"
  for pkg in "${PACKAGES[@]}"; do
    options=()
    [ "$pkg" != clustvit_ros ] || options=(-DCLUSTVIT_DEVELOP=ON)  # the venv imports the source tree
    run "cmake configure of $pkg" cmake -S "$(pkg_dir "$pkg")" -B "$BUILD/$pkg" -G "$GENERATOR" \
      -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" \
      -DBUILD_TESTING=OFF \
      "${options[@]}"
  done
fi

say "building and installing ${PACKAGES[*]} into $VENV"
for pkg in "${PACKAGES[@]}"; do
  run "cmake build of $pkg" cmake --build "$BUILD/$pkg" --parallel "$JOBS"
  run "cmake install of $pkg" cmake --install "$BUILD/$pkg"
done
smoke || { tail -n 25 "$LOG" >&2; die "smoke check failed: $PY cannot import clustvit_msgs.msg.SegmentationStats, or imports clustvit_ros / clustvit_core from elsewhere than $ROOT (full log: $LOG)"; }
echo "$HASH" >"$STAMP"
say "done in $((SECONDS - start)) s: $PY imports clustvit_msgs and this source tree's clustvit_ros / clustvit_core"
