"""Native llama.cpp tools (``llama-bench``, ``llama-server``, ``llama-quantize``) built from the llama-cpp-python sdist's own sources.

The peer our engine is measured against is llama.cpp itself, not llama-cpp-python's one-Python-call-
per-token loop. ``--setup`` builds the two tools with cmake from ``vendor/llama.cpp`` of the same
llama-cpp-python sdist that ``benchmarks/llama_cpp.py`` converts and quantizes with, into a folder
outside the repository::

    <home>/llama-cpp-tools/<version>-native/bin/{llama-bench,llama-server,...}     -DGGML_NATIVE=ON
    <home>/llama-cpp-tools/<version>-portable/bin/{llama-bench,llama-server,...}   named instruction sets, no AMX

(``<home>`` is ``$SLMOPS_HOME`` or ``~/.slmops``.) The native build (``-march=native``) comes first;
each build is probed with a few tokens of the bundled quantized model, and where the native one
crashes (a virtual machine that reports AMX but does not run it dies in its first quantized
decode), the portable build is made as well. :func:`find_tools` returns the working build,
native first; ``build.json`` beside ``bin/`` records the cmake options and the probe's outcome.

    .venv/bin/python benchmarks/llama_cpp_native.py --setup     # once; needs the package index and cmake
    .venv/bin/python benchmarks/llama_cpp_native.py             # prints where the tools are

From Python (another benchmark)::

    from llama_cpp_native import find_tools   # benchmarks/ is on the path of a benchmark run as a script
    tools = find_tools()                      # None until --setup ran
    subprocess.run([tools.server, "-m", gguf, "--port", "8080"])
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The llama-cpp-python release whose vendored llama.cpp is built (the one benchmarks/llama_cpp.py pins).
LLAMA_CPP_PYTHON = "0.3.36"
#: The tools built; nothing else of llama.cpp (``llama-quantize`` makes the benchmark's GGUF quants).
TARGETS = ("llama-bench", "llama-server", "llama-quantize")
#: Options of every build: no web UI download, no libcurl, static libraries (the binaries stand alone in bin/).
COMMON_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF",
                     "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")


class Flavor(StrEnum):
    """How a build picks its instruction sets."""

    NATIVE = "native"  # -DGGML_NATIVE=ON: whatever -march=native turns on, AMX included where reported
    PORTABLE = "portable"  # -DGGML_NATIVE=OFF and the reported instruction sets named one by one, AMX left out


@dataclass(frozen=True)
class LlamaTools:
    """One build of the native tools.

    Attributes:
        folder: the build's folder (``<home>/llama-cpp-tools/<version>-<flavor>``).
        flavor: native or portable.
        bench: the ``llama-bench`` binary.
        server: the ``llama-server`` binary.
        cmake_args: the options it was configured with.
    """

    folder: Path
    flavor: Flavor
    bench: Path
    server: Path
    cmake_args: tuple[str, ...]

    @property
    def quantize(self) -> Path:
        """The ``llama-quantize`` binary."""
        return self.bench.with_name("llama-quantize")


def isa_cmake_args(flags: set[str]) -> list[str]:
    """llama.cpp's instruction-set options for a CPU with ``flags`` (``/proc/cpuinfo`` names), AMX left out.

    A ``-march=native`` build on a virtual machine that reports AMX but does not run it crashed in
    the first decode of any quantized model here; without AMX (its repacked AVX-512 kernels on)
    it runs. So the portable build names the instruction sets instead of asking for the native ones.

    Example:
        >>> " ".join(isa_cmake_args({"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_int8"}))
        '-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON'
    """
    wanted = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
              "avx512f": "GGML_AVX512", "avx512_vnni": "GGML_AVX512_VNNI"}
    return ["-DGGML_NATIVE=OFF", *(f"-D{option}=ON" for flag, option in wanted.items() if flag in flags)]


def cmake_args(flavor: Flavor, flags: set[str]) -> list[str]:
    """The cmake options of a ``flavor`` build on a CPU with ``flags``.

    Example:
        >>> cmake_args(Flavor.NATIVE, set())[-1]
        '-DGGML_NATIVE=ON'
    """
    isa = ["-DGGML_NATIVE=ON"] if flavor is Flavor.NATIVE else isa_cmake_args(flags)
    return [*COMMON_CMAKE_ARGS, *isa]


def tools_root(home: Path | None = None) -> Path:
    """``<home>/llama-cpp-tools``: the sdist, its unpacked llama.cpp and the builds."""
    if home is None:
        from slmops.toolkit.core import settings

        home = settings.home()
    return Path(home) / "llama-cpp-tools"


def build_folder(flavor: Flavor, version: str = LLAMA_CPP_PYTHON, home: Path | None = None) -> Path:
    return tools_root(home) / f"{version}-{flavor}"


def _tools_in(folder: Path) -> LlamaTools | None:
    """The build in ``folder`` when its binaries are there and its probe passed."""
    record = folder / "build.json"
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    bench, server = folder / "bin" / "llama-bench", folder / "bin" / "llama-server"
    if not (info.get("probe_ok") and all((folder / "bin" / name).is_file() for name in TARGETS)):
        return None
    return LlamaTools(folder=folder, flavor=Flavor(info["flavor"]), bench=bench, server=server,
                      cmake_args=tuple(info["cmake_args"]))


def find_tools(version: str = LLAMA_CPP_PYTHON, home: Path | None = None) -> LlamaTools | None:
    """The working native build of ``llama-bench`` and ``llama-server``, native flavor first; None before ``--setup``.

    ``$SLMOPS_LLAMA_CPP_TOOLS`` names a build folder (one with ``bin/`` and ``build.json``) to use instead.
    """
    given = os.environ.get("SLMOPS_LLAMA_CPP_TOOLS")
    if given:
        return _tools_in(Path(given))
    for flavor in Flavor:
        found = _tools_in(build_folder(flavor, version, home))
        if found:
            return found
    return None


def require_tools(version: str = LLAMA_CPP_PYTHON, home: Path | None = None) -> LlamaTools:
    """:func:`find_tools`, or exit with the one line that says how to build them."""
    found = find_tools(version, home)
    if found is None:
        sys.exit(f"native llama.cpp tools {version} are not built in {tools_root(home)}: run  "
                 f"{Path(sys.executable).name} benchmarks/llama_cpp_native.py --setup")
    return found


# --- setup -------------------------------------------------------------------------------------------------------

def sdist(version: str, home: Path | None = None) -> Path:
    """The llama-cpp-python sdist (``pip download``, kept in :func:`tools_root`)."""
    root = tools_root(home)
    archive = root / f"llama_cpp_python-{version}.tar.gz"
    if not archive.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(root)], check=True)
    return archive


def unpack_sources(version: str, home: Path | None = None) -> Path:
    """The sdist's ``vendor/llama.cpp``, unpacked once into ``<tools_root>/<version>-src``."""
    target = tools_root(home) / f"{version}-src"
    if (target / "CMakeLists.txt").is_file():
        return target
    archive = sdist(version, home)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.removeprefix(prefix)
            if not member.name.startswith(prefix) or not inner or ".." in Path(inner).parts:
                continue
            destination = staging / inner
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                destination.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as data, open(destination, "wb") as out:
                    shutil.copyfileobj(data, out)
                destination.chmod(member.mode & 0o755 | 0o644)
    staging.rename(target)
    return target


def probe(tools: Path, model: Path, threads: int = 2) -> tuple[bool, str]:
    """A few prompt and generated tokens of ``model`` through ``llama-bench``: whether it ran, and what it said last.

    A build whose kernels the CPU does not run dies here (segmentation fault, illegal instruction).
    """
    bench = tools / "bin" / "llama-bench"
    done = subprocess.run([str(bench), "-m", str(model), "-p", "16", "-n", "4", "-r", "1", "-t", str(threads),
                           "-o", "json"], capture_output=True, text=True, timeout=300, check=False)
    tail = (done.stderr.strip().splitlines() or [""])[-1]
    return done.returncode == 0, f"exit {done.returncode}: {tail}" if done.returncode else "ran"


def build(flavor: Flavor, source: Path, folder: Path, jobs: int) -> list[str]:
    """Configure and build :data:`TARGETS` of ``source`` into ``folder/build``; copy the binaries to ``folder/bin``."""
    from slmops.toolkit.core import system

    args = cmake_args(flavor, system.cpu_flags())
    build_dir = folder / "build"
    log = folder / "build.log"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"Building {', '.join(TARGETS)} ({flavor}: {' '.join(args)}) in {build_dir}, {jobs} jobs; log {log}",
          flush=True)
    with open(log, "w") as out:
        for command in (["cmake", "-S", str(source), "-B", str(build_dir), *args],
                        ["cmake", "--build", str(build_dir), "--config", "Release", "--target", *TARGETS,
                         f"-j{jobs}"]):
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                sys.exit(f"the {flavor} llama.cpp build failed: see {log}")
    (folder / "bin").mkdir(exist_ok=True)
    for name in TARGETS:
        shutil.copy2(build_dir / "bin" / name, folder / "bin" / name)
    print(f"Built in {time.perf_counter() - start:.0f} s", flush=True)
    return args


def setup(version: str = LLAMA_CPP_PYTHON, home: Path | None = None, model: Path | None = None,
          jobs: int | None = None, flavors: tuple[Flavor, ...] = (Flavor.NATIVE, Flavor.PORTABLE)) -> LlamaTools:
    """Build the tools (native first, portable only where the native build crashes on ``model``); skip what works.

    Args:
        version: the llama-cpp-python sdist whose llama.cpp is built.
        home: the toolkit's folder (default ``$SLMOPS_HOME`` or ``~/.slmops``).
        model: the GGUF model of the probe (default: the bundled model's Q4_1 file).
        jobs: parallel compile jobs (default: the CPU count).
        flavors: the builds to try, in order.

    Returns:
        The first build whose probe ran.
    """
    if shutil.which("cmake") is None:
        sys.exit("cmake is not installed: install it (apt-get install cmake, or pip install cmake) and a C++ compiler")
    if model is None:
        from slmops.toolkit.weights.bundled import bundled_gguf

        model = bundled_gguf()
    for flavor in flavors:
        folder = build_folder(flavor, version, home)
        found = _tools_in(folder)
        if found:
            print(f"llama.cpp {flavor} tools already built and working: {folder / 'bin'}")
            return found
        record = folder / "build.json"
        if record.is_file() and not json.loads(record.read_text()).get("probe_ok"):
            print(f"The {flavor} build crashed on this machine before ({record}); skipping it", flush=True)
            continue
        args = build(flavor, unpack_sources(version, home), folder, jobs or os.cpu_count() or 2)
        ok, said = probe(folder, model)
        record.write_text(json.dumps({"flavor": str(flavor), "llama_cpp_python": version, "cmake_args": args,
                                      "probe_model": str(model), "probe_ok": ok, "probe": said}, indent=1))
        if ok:
            print(f"llama.cpp {flavor} tools ready: {folder / 'bin'}")
            return _tools_in(folder)
        print(f"The {flavor} build crashed on {model.name} ({said}); trying the next flavor", flush=True)
    sys.exit(f"no llama.cpp build ran here ({', '.join(flavors)}); see the build.json files in {tools_root(home)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--setup", action="store_true", help="build the tools (native, else portable), then exit")
    parser.add_argument("--version", default=LLAMA_CPP_PYTHON, help="the llama-cpp-python sdist (default: %(default)s)")
    parser.add_argument("--probe-model", type=Path, help="the GGUF of the crash probe (default: the bundled Q4_1)")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: the CPU count)")
    parser.add_argument("--flavor", choices=[str(f) for f in Flavor],
                        help="build only this flavor (default: native, then portable if native crashes)")
    args = parser.parse_args()
    if args.probe_model and not args.probe_model.is_file():
        sys.exit(f"--probe-model {args.probe_model}: no such file; pass a GGUF model")
    if args.setup:
        flavors = (Flavor(args.flavor),) if args.flavor else tuple(Flavor)
        tools = setup(args.version, model=args.probe_model, jobs=args.jobs, flavors=flavors)
    else:
        tools = require_tools(args.version)
    print(json.dumps({"flavor": str(tools.flavor), "bench": str(tools.bench), "server": str(tools.server),
                      "cmake_args": list(tools.cmake_args)}, indent=1))


if __name__ == "__main__":
    main()
