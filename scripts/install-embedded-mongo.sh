#!/usr/bin/env bash
# Build the embedded MongoDB-compatible store (tools/embedded-mongo: mongo-java-server 1.47
# with the H2 backend, behind our launcher) with Maven, once per machine and per version of
# the launcher's sources. The result (the launcher jar and its dependencies) is cached
# outside the work tree, keyed by a hash of the sources, so later runs take no time.
# Needs Java 17+ and Maven; prints the folder holding the jars.
set -euo pipefail
cd "$(dirname "$0")/.."
src=tools/embedded-mongo
key=$(cat "$src/pom.xml" $(find "$src/src" -type f | LC_ALL=C sort) | sha256sum | cut -c1-12)
dest="${XDG_CACHE_HOME:-$HOME/.cache}/marketpulse/embedded-mongo-$key"
if [ -f "$dest/embedded-mongo.jar" ]; then
  echo "embedded-mongo: $dest (cached)"
  exit 0
fi
command -v java >/dev/null || { echo "install-embedded-mongo: Java 17 or newer is required (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 2; }
command -v mvn >/dev/null || { echo "install-embedded-mongo: Maven is required (Debian: apt-get install maven)" >&2; exit 2; }
echo "embedded-mongo: building the local MongoDB-compatible store with Maven (once per machine, about a minute on the first run: it downloads mongo-java-server, H2 and netty from Maven Central)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
(cd "$work" && mvn -q -B package dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$work/lib") || { echo "install-embedded-mongo: the Maven build failed (see above)" >&2; exit 1; }
mkdir -p "$dest.tmp"
cp "$work"/lib/*.jar "$work/target/embedded-mongo.jar" "$dest.tmp/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "embedded-mongo: $dest"
