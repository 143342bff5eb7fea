"""C# task sources: compiled once per content, lazily, into a cache.

`dotnet run app.cs` exists only from .NET 10 on, and compiling at
every run would cost seconds per job. So a `.cs` task is compiled once, lazily,
by its `CommandSpec.prepare` hook, which `runners.command.run_command` awaits
before every start (a hash check when the cache is fresh) and which
`TaskDef.prepare()` exposes for warming up. With `dotnet` on PATH (any SDK
>= 6) the hook writes a one-file project into the cache and runs
`dotnet build` (output `CACHE/NAME.dotnet/NAME.dll`, run with `dotnet`);
without it, `mcs -out:CACHE/NAME.exe` compiles for Mono (run with `mono`).
The cache key is the source's SHA-256 plus the toolchain, written next to the
output as `*.stamp`; outputs are built in a private temporary directory and
moved into place atomically, so concurrent Runs (or daemons sharing the state
directory) never see a half-written binary. A compile error fails the Run
(retryable: fix the file and the retry succeeds) with the compiler's output,
and is not retried for the same source.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import structlog

from runners.command import DEFAULT_ENV_ALLOW, inherited_env
from supervisor.errors import HandlerImportError

log = structlog.get_logger(__name__)
_COMPILE_TIMEOUT_S = 600.0


async def _run_tool(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run a build tool to its end; kill its whole group if we are cancelled or it hangs."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(cwd),
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _COMPILE_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    return proc.returncode or 0, out.decode("utf-8", errors="replace")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _xml_attr(text: str) -> str:
    """`text` as an XML attribute value (xml.sax.saxutils would import urllib.request at every daemon start)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class CSharpBuild:
    """Compiles one `.cs` file into the cache once per content (see the module doc).

    Call it (await) before each run: it is a stat and a stamp read when the
    cache is fresh.
    """

    def __init__(self, source: Path, cache_dir: Path, toolchain: str, tool: str) -> None:
        if toolchain not in ("mcs", "dotnet"):
            raise ValueError(f"unknown C# toolchain {toolchain!r}")
        self.source = source
        self.cache_dir = cache_dir
        self.toolchain = toolchain
        self.tool = tool
        self.assembly = re.sub(r"[^A-Za-z0-9_.]", "_", source.stem) or "Task"
        if toolchain == "mcs":
            self.output = cache_dir / f"{source.stem}.exe"
        else:
            self.output = cache_dir / f"{source.stem}.dotnet" / f"{self.assembly}.dll"
        self._stamp = cache_dir / f"{source.stem}.{toolchain}.stamp"
        self._lock = asyncio.Lock()
        self._digest_memo: tuple[tuple[int, int, int], str] | None = None
        self._failed: tuple[str, str] | None = None  # (stamp, error) of the last compile error
        self._tfm: str | None = None

    def _digest(self) -> str:
        st = self.source.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._digest_memo is None or self._digest_memo[0] != key:
            self._digest_memo = (key, hashlib.sha256(self.source.read_bytes()).hexdigest())
        return self._digest_memo[1]

    def _fresh(self, stamp: str) -> bool:
        try:
            return self.output.exists() and self._stamp.read_text(encoding="utf-8") == stamp
        except OSError:
            return False

    def _env(self) -> dict[str, str]:
        env = inherited_env(DEFAULT_ENV_ALLOW, os.environ)
        env.update(DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1", DOTNET_SKIP_FIRST_TIME_EXPERIENCE="1")
        env.setdefault("DOTNET_CLI_HOME", str(self.cache_dir))
        return env

    async def _target_framework(self) -> str:
        if self._tfm is None:
            code, out = await _run_tool([self.tool, "--version"], self._env(), self.cache_dir)
            match = re.match(r"\s*(\d+)\.", out)
            if code != 0 or match is None or int(match.group(1)) < 5:
                raise HandlerImportError(
                    str(self.source),
                    f"cannot tell the .NET SDK version (`dotnet --version`: {out.strip()!r})",
                )
            self._tfm = f"net{match.group(1)}.0"
        return self._tfm

    async def __call__(self) -> None:
        try:
            digest = self._digest()
        except OSError as exc:
            raise HandlerImportError(str(self.source), f"cannot read the C# source: {exc}") from None
        async with self._lock:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tag = "mcs" if self.toolchain == "mcs" else await self._target_framework()
            stamp = f"{tag} {digest}"
            if self._fresh(stamp):
                return
            if self._failed is not None and self._failed[0] == stamp:
                raise HandlerImportError(str(self.source), self._failed[1])
            work = Path(tempfile.mkdtemp(prefix=f".build-{self.assembly}-", dir=self.cache_dir))
            try:
                log.info("task.compiling", source=str(self.source), toolchain=self.toolchain)
                if self.toolchain == "mcs":
                    await self._build_mcs(work, stamp)
                else:
                    await self._build_dotnet(work, stamp, tag)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            tmp_stamp = self._stamp.with_name(f".{self._stamp.name}.{uuid.uuid4().hex}")
            tmp_stamp.write_text(stamp, encoding="utf-8")
            os.replace(tmp_stamp, self._stamp)

    def _compile_failed(self, stamp: str, code: int, out: str) -> HandlerImportError:
        cause = f"C# compile failed ({self.toolchain} exited with code {code}):\n{_tail(out)}"
        self._failed = (stamp, cause)
        return HandlerImportError(str(self.source), cause)

    async def _build_mcs(self, work: Path, stamp: str) -> None:
        built = work / self.output.name
        argv = [self.tool, f"-out:{built}", "-target:exe", "-optimize+", str(self.source)]
        code, out = await _run_tool(argv, self._env(), work)
        if code != 0 or not built.exists():
            raise self._compile_failed(stamp, code, out)
        os.replace(built, self.output)

    async def _build_dotnet(self, work: Path, stamp: str, tfm: str) -> None:
        project = work / f"{self.assembly}.csproj"
        project.write_text(
            f"""<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>{tfm}</TargetFramework>
    <AssemblyName>{self.assembly}</AssemblyName>
    <ImplicitUsings>disable</ImplicitUsings>
    <Nullable>disable</Nullable>
    <InvariantGlobalization>true</InvariantGlobalization>
    <EnableDefaultCompileItems>false</EnableDefaultCompileItems>
  </PropertyGroup>
  <ItemGroup>
    <Compile Include="{_xml_attr(str(self.source))}" />
  </ItemGroup>
</Project>
""",
            encoding="utf-8",
        )
        out_dir = work / "out"
        argv = [self.tool, "build", str(project), "-c", "Release", "-o", str(out_dir), "--nologo", "-v", "q"]
        code, out = await _run_tool(argv, self._env(), work)
        if code != 0 or not (out_dir / self.output.name).exists():
            raise self._compile_failed(stamp, code, out)
        final = self.output.parent
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, old)
        try:
            os.rename(out_dir, final)
        except OSError:
            if not self.output.exists():  # nobody else installed a build either
                raise
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["CSharpBuild"]
