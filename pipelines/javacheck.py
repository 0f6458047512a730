"""Check that a Java 17+ runtime is available before starting Spark."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from pipelines.errors import EnvironmentProblem

MIN_JAVA = 17

_HOW_TO = (
    "Spark 4 needs Java {min}+. Install it (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`; "
    "clusters: `module load openjdk/17` or similar) or point JAVA_HOME at one. `make setup` installs it where it can."
)


def java_executable() -> str | None:
    """The java binary Spark will use: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """Major version printed by `java -version` (8 for 1.8.x), or None if it cannot be read."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java(minimum: int = MIN_JAVA) -> int:
    """Return the Java major version, or raise EnvironmentProblem with install advice."""
    java = java_executable()
    if java is None:
        raise EnvironmentProblem(
            "no Java runtime found (JAVA_HOME unset and no `java` on PATH). " + _HOW_TO.format(min=minimum)
        )
    major = java_major_version(java)
    if major is None:
        raise EnvironmentProblem(f"could not read the version of {java}. " + _HOW_TO.format(min=minimum))
    if major < minimum:
        raise EnvironmentProblem(f"{java} is Java {major}. " + _HOW_TO.format(min=minimum))
    return major
