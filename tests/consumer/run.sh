#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Uses netdeconv the two ways another project would, in a fresh temporary directory:
#   1. meson install of the source tree, then consumer.cpp compiled with nothing but
#      `pkg-config --cflags --libs netdeconv` (the headers must come from the install prefix);
#   2. a Meson project with the source tree as subprojects/netdeconv (tests and examples off).
#   tests/consumer/run.sh [SOURCE_ROOT]      (default: this script's repository)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "${1:-$here/../..}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "consumer: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "install the library into $tmp/prefix"
meson setup "$tmp/build" "$src" --prefix="$tmp/prefix" -Dtests=false -Dexamples=false -Dbench=disabled >"$tmp/setup.log" 2>&1 ||
  { cat "$tmp/setup.log"; fail "meson setup of $src"; }
meson install -C "$tmp/build" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "meson install"; }
pc=$(find "$tmp/prefix" -name netdeconv.pc)
[ -n "$pc" ] || fail "no netdeconv.pc installed under $tmp/prefix"
diff -r "$src/include/netdeconv" "$tmp/prefix/include/netdeconv" || fail "installed headers differ from include/netdeconv"
echo "-- $pc"; cat "$pc"

step "pkg-config consumer"
PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
cflags=$(pkg-config --cflags netdeconv) || fail "pkg-config --cflags netdeconv"
libs=$(pkg-config --libs netdeconv) || fail "pkg-config --libs netdeconv"
requires=$(pkg-config --print-requires netdeconv)
[[ " $cflags " == *" -I$tmp/prefix/include "* ]] || fail "Cflags lack -I$tmp/prefix/include: $cflags"
[[ "$cflags" != *"$src"* ]] || fail "Cflags point into the source tree: $cflags"
for r in eigen3 xsimd; do grep -qw "^$r" <<<"$requires" || fail "Requires lacks $r: $requires"; done
# Warnings are errors for netdeconv's headers; Eigen's own (GCC 12 false -Wmaybe-uninitialized)
# are silenced the way Meson's include_type: 'system' does, by turning its -I into -isystem.
flags=()
for f in $cflags; do
  [[ $f == -I* && $f != "-I$tmp/prefix/include" ]] && flags+=(-isystem "${f#-I}") || flags+=("$f")
done
mkdir "$tmp/pc" && cp "$here/consumer.cpp" "$tmp/pc/" && cd "$tmp/pc"
# shellcheck disable=SC2086  # $libs is a word list
${CXX:-c++} -std=c++20 -O2 -Wall -Wextra -Wpedantic -Werror "${flags[@]}" -MMD -MF consumer.d consumer.cpp -o consumer $libs ||
  fail "compiling with: ${flags[*]} $libs"
used=$(grep -o '[^ ]*/netdeconv/netdeconv\.hpp' consumer.d || true)
[[ "$used" == "$tmp/prefix/include/netdeconv/netdeconv.hpp" ]] || fail "netdeconv.hpp came from '$used', not the install prefix"
! grep -q "$src/include" consumer.d || fail "the build read headers from $src/include"
./consumer || fail "pkg-config consumer"

step "Meson subproject consumer"
mkdir -p "$tmp/sub/subprojects" && cd "$tmp/sub"
cp "$here/subproject/meson.build" "$here/consumer.cpp" .
ln -s "$src" subprojects/netdeconv
meson setup build >setup.log 2>&1 || { cat setup.log; fail "meson setup of the subproject consumer"; }
[ ! -e build/subprojects/netdeconv/tests ] || fail "the subproject built its tests despite tests=false"
meson compile -C build >compile.log 2>&1 || { cat compile.log; fail "compiling the subproject consumer"; }
build/consumer || fail "subproject consumer"
echo "consumer: both ways pass"
