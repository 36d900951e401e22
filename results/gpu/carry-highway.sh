#!/bin/sh
# Copies this machine's Highway (Debian's libhwy-dev: headers, shared library, CMake config) into
# .gpu/hwy, keeping /usr's layout so its CMake config stays relocatable, and git-ignores .gpu:
# the device machine has no Highway and cannot download one. Then: run with carry [".gpu"] and
# the command `sh results/gpu/run.sh`.
set -eu
lib=/usr/lib/x86_64-linux-gnu
rm -rf .gpu/hwy
mkdir -p .gpu/hwy/include .gpu/hwy/lib/x86_64-linux-gnu/cmake
cp -a /usr/include/hwy .gpu/hwy/include/
cp -a $lib/libhwy.so* $lib/libhwy_contrib.so* $lib/libhwy_test.so* .gpu/hwy/lib/x86_64-linux-gnu/
cp -a $lib/cmake/hwy .gpu/hwy/lib/x86_64-linux-gnu/cmake/
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo /.gpu/ >> "$exclude"
