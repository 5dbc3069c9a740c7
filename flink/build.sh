#!/usr/bin/env bash
# Builds the Flink state backend jar and the test jobs.
#
#   flink/build.sh            fetch Flink 2.3.0 jars (once), build the native library, compile
#                             the backend into flink/build/flowstate-flink.jar, compile the test
#                             jobs into flink/build/jobs-classes/, the JNI error check and the
#                             benchmark driver into flink/build/{checks,bench}-classes/, write
#                             flink/build/classpath.txt
#
# Environment:
#   FLINK_LIB_DIR     a directory that already holds the Flink 2.3.0 jars (flink-dist-2.3.0.jar,
#                     flink-connector-files-2.3.0.jar, log4j-*.jar); default flink/.jars/, filled
#                     from the apache-flink-libraries package on PyPI when empty
#   SKIP_NATIVE=1     do not run cargo (use the library already in target/release/)
#   CARGO_PROFILE     cargo profile directory to take the library from (default release)
set -euo pipefail

FLINK_VERSION=2.3.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="$here/build"

log() { echo "flink/build.sh: $*" >&2; }

have_flink_jars() {
  [ -f "$1/flink-dist-$FLINK_VERSION.jar" ] && [ -f "$1/flink-connector-files-$FLINK_VERSION.jar" ] &&
    compgen -G "$1/log4j-core-*.jar" >/dev/null
}

# 1. Flink jars.
lib=""
if [ -n "${FLINK_LIB_DIR:-}" ]; then
  if have_flink_jars "$FLINK_LIB_DIR"; then
    lib="$(cd "$FLINK_LIB_DIR" && pwd)"
  else
    log "FLINK_LIB_DIR=$FLINK_LIB_DIR lacks flink-dist-$FLINK_VERSION.jar, flink-connector-files-$FLINK_VERSION.jar or log4j-core; using flink/.jars/"
  fi
fi
if [ -z "$lib" ]; then
  lib="$here/.jars"
  if ! have_flink_jars "$lib"; then
    log "fetching apache-flink-libraries==$FLINK_VERSION into $lib"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --dest "$tmp" "apache-flink-libraries==$FLINK_VERSION"
    archive="$(compgen -G "$tmp/apache[-_]flink[-_]libraries-*" | head -n 1)"
    # Only pyflink/lib/*.jar, from the wheel or an sdist; unpacked beside flink/.jars/ and
    # renamed into place, so that an interrupted fetch leaves no half-written jar behind.
    rm -rf "$lib.tmp"
    mkdir -p "$lib.tmp"
    python3 - "$archive" "$lib.tmp" <<'PY'
import os, shutil, sys, tarfile, zipfile
archive, dest = sys.argv[1], sys.argv[2]
def wanted(name):
    parts = name.split("/")
    return len(parts) >= 3 and parts[-3:-1] == ["pyflink", "lib"] and name.endswith(".jar")
if archive.endswith((".whl", ".zip")):
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if wanted(name):
                with z.open(name) as src, open(os.path.join(dest, name.split("/")[-1]), "wb") as dst:
                    shutil.copyfileobj(src, dst)
else:
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            if member.isfile() and wanted(member.name):
                with t.extractfile(member) as src, open(os.path.join(dest, member.name.split("/")[-1]), "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
    have_flink_jars "$lib.tmp" || {
      log "$archive did not contain the expected jars"
      exit 1
    }
    rm -rf "$lib"
    mv "$lib.tmp" "$lib"
  fi
fi

flink_cp="$lib/flink-dist-$FLINK_VERSION.jar:$lib/flink-connector-files-$FLINK_VERSION.jar"
for jar in "$lib"/log4j-*.jar; do
  flink_cp="$flink_cp:$jar"
done

# 2. Native library.
profile="${CARGO_PROFILE:-release}"
native_lib="$root/target/$profile/libflowstate_flink.so"
if [ -f "$here/native/Cargo.toml" ] && [ "${SKIP_NATIVE:-0}" != 1 ]; then
  log "cargo build --release -p flowstate-flink"
  (cd "$root" && cargo build --release -p flowstate-flink)
fi

mkdir -p "$build"

# 3. Backend jar: the Java sources plus the native library.
mapfile -t backend_sources < <(find "$here/java/src" -name '*.java' 2>/dev/null | sort)
jar="$build/flowstate-flink.jar"
if [ "${#backend_sources[@]}" -gt 0 ]; then
  if [ ! -f "$native_lib" ]; then
    log "missing $native_lib (the native crate did not build)"
    exit 1
  fi
  classes="$build/backend-classes"
  rm -rf "$classes"
  mkdir -p "$classes/native/linux-x86_64"
  log "javac ${#backend_sources[@]} backend sources"
  javac --release 17 -nowarn -encoding UTF-8 -cp "$flink_cp" -d "$classes" "${backend_sources[@]}"
  if [ -d "$here/java/resources" ]; then
    cp -r "$here/java/resources/." "$classes/"
  fi
  # The jar carries the library without its debug information (the release profile's line
  # tables make it ~5x larger, and every JVM extracts it before its first backend opens);
  # function names stay for backtraces. Without `strip`, the library goes in as built.
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$classes/native/linux-x86_64/libflowstate_flink.so" "$native_lib"
  else
    cp "$native_lib" "$classes/native/linux-x86_64/libflowstate_flink.so"
  fi
  # A new file renamed into place: a JVM still running from the old jar keeps reading that one.
  jar --create --file "$jar.tmp" -C "$classes" .
  mv -f "$jar.tmp" "$jar"
  log "wrote $jar"
else
  rm -f "$jar"
  log "no backend sources under flink/java/src; flowstate-flink.jar not built"
fi

# 4. Test jobs.
mapfile -t job_sources < <(find "$here/java/jobs" -name '*.java' | sort)
jobs_classes="$build/jobs-classes"
# Compiled beside the old classes and swapped in, so that jobs already running lose their classes
# for a moment at most.
rm -rf "$jobs_classes.new" "$jobs_classes.old"
mkdir -p "$jobs_classes.new"
log "javac ${#job_sources[@]} job sources"
javac --release 17 -encoding UTF-8 -Xlint:-options -cp "$flink_cp" -d "$jobs_classes.new" "${job_sources[@]}"
cp "$here/java/jobs/log4j2.properties" "$jobs_classes.new/log4j2.properties"
if [ -d "$jobs_classes" ]; then
  mv "$jobs_classes" "$jobs_classes.old"
fi
mv "$jobs_classes.new" "$jobs_classes"
rm -rf "$jobs_classes.old"

# 5. The JNI error check and the benchmark driver, against the backend jar (they call its classes).
if [ -f "$jar" ]; then
  for part in checks bench; do
    mapfile -t part_sources < <(find "$here/java/$part" -name '*.java' 2>/dev/null | sort)
    [ "${#part_sources[@]}" -gt 0 ] || continue
    out="$build/$part-classes"
    rm -rf "$out"
    mkdir -p "$out"
    log "javac ${#part_sources[@]} $part sources"
    javac --release 17 -encoding UTF-8 -Xlint:-options -cp "$jobs_classes:$flink_cp:$jar" -d "$out" "${part_sources[@]}"
  done
fi

# 6. Classpath: the jobs' classes first so that their log4j2.properties wins.
classpath="$jobs_classes:$flink_cp"
if [ -f "$jar" ]; then
  classpath="$classpath:$jar"
fi
echo "$classpath" >"$build/classpath.txt.tmp"
mv -f "$build/classpath.txt.tmp" "$build/classpath.txt"
log "classpath in $build/classpath.txt"
echo "$classpath"
