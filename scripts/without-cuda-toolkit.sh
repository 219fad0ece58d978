#!/usr/bin/env bash
# Runs a command as on a machine without the CUDA toolkit (most users of a CUDA torch, every CI
# runner without a GPU), on a machine that has one:
#
#     scripts/without-cuda-toolkit.sh pip install --no-build-isolation .
#
# Unsetting CUDA_HOME and taking nvcc off PATH is not enough: torch's CUDA_HOME, CMake's
# FindCUDAToolkit and torch's FindCUDA all fall back to /usr/local/cuda (and /usr/local/cuda-*,
# /opt/cuda). So the command runs in a private mount namespace (unshare, as root or in a user
# namespace) where those folders do not exist and PATH's folders hold no toolkit programs. Nothing
# changes for any other process. Before running the command it checks that neither a shell, CMake's
# places nor torch can find a toolkit, and stops if one still can.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }

if [ -z "${MM_INSIDE_HIDDEN_TOOLKIT:-}" ]; then
  command -v unshare >/dev/null || { echo "$0: needs unshare (util-linux)" >&2; exit 1; }
  flags=(--mount --propagation private)
  [ "$(id -u)" -eq 0 ] || flags+=(--map-root-user)
  MM_INSIDE_HIDDEN_TOOLKIT=1 exec unshare "${flags[@]}" "$0" "$@"
fi
unset MM_INSIDE_HIDDEN_TOOLKIT

# The toolkit's roots: where the lookups above go, and where nvcc on PATH really lives.
roots=()
for root in /usr/local/cuda /usr/local/cuda-* /opt/cuda /opt/cuda-* ${CUDA_HOME:-} ${CUDA_PATH:-}; do
  [ -e "$root" ] && roots+=("$root")
done
if nvcc=$(type -P nvcc); then
  real=$(readlink -f "$nvcc")
  # A wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`) names the real one.
  [ "$(head -c2 "$real")" = "#!" ] && real=$(grep -o '/[^" ]*/bin/nvcc' "$real" | head -n1 || echo "$real")
  roots+=("$(dirname "$(dirname "$real")")")
fi
unset CUDA_HOME CUDA_PATH CUDACXX CUDAToolkit_ROOT CUDA_ROOT CUDA_BIN_PATH CUDA_TOOLKIT_ROOT_DIR

# The programs of the toolkit's bin folders, hidden wherever PATH has one of them.
declare -A tool=([nvcc]=1)
for root in "${roots[@]}"; do
  for program in "$root"/bin/*; do [ -e "$program" ] && tool[$(basename "$program")]=1; done
done

work=$(mktemp -d)
mount -t tmpfs mm-no-cuda "$work"
n=0
# Replaces folder $1 by a folder of links to its entries, less those for which `hide NAME` says so.
shadow() {
  local dir=$1 orig="$work/orig$n" copy="$work/copy$n" entry name
  n=$((n + 1))
  mkdir -p "$orig" "$copy"
  mount --bind "$dir" "$orig"
  for entry in "$orig"/* "$orig"/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=$(basename "$entry")
    hide "$dir" "$name" || ln -s "$entry" "$copy/$name"
  done
  mount --bind "$copy" "$dir"
}
hide() {  # folder, name: hidden when it is a toolkit root, or a toolkit program in a PATH folder
  local path="$1/$2" root
  for root in "${roots[@]}"; do
    [ "$path" = "$root" ] && return 0
  done
  [ -n "${on_path[$1]:-}" ] && [ -n "${tool[$2]:-}" ]
}
declare -A on_path=() parents=()
IFS=: read -r -a path_dirs <<< "$PATH"
for dir in "${path_dirs[@]}"; do
  [ -d "$dir" ] || continue
  for name in "${!tool[@]}"; do
    if [ -e "$dir/$name" ]; then on_path[$(readlink -f "$dir")]=1; parents[$(readlink -f "$dir")]=1; fi
  done
done
for root in "${roots[@]}"; do parents[$(dirname "$root")]=1; done
# Parents first: a child's path then leads through its parent's links to the folder to shadow.
for dir in $(printf '%s\n' "${!parents[@]}" | awk '{ print length, $0 }' | sort -n | cut -d' ' -f2-); do
  [ -d "$dir" ] || continue  # inside a toolkit root that its parent's shadow has hidden already
  shadow "$dir"
done

if found=$(type -P nvcc); then echo "$0: nvcc is still found at $found" >&2; exit 1; fi
for root in /usr/local/cuda /opt/cuda; do
  if [ -e "$root" ]; then echo "$0: $root is still there" >&2; exit 1; fi
done
exec "$@"
