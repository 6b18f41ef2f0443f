# Set up posttrain in .\.venv on Windows, as scripts/setup.sh does on Linux: the CPU build of torch
# first, then posttrain with its dependencies. llama-cpp-python compiles llama.cpp from source the first
# time (it needs Visual Studio's C++ build tools and CMake); pip's wheel cache makes later installs fast.
#
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1          posttrain itself
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1 -Test    and what the tests drive: the
#                                                                      extras test, lora, track and ray (as
#                                                                      setup.sh --test); it says how to get
#                                                                      Chromium and Go, which the tests that
#                                                                      need them are skipped without
#
# Building llama.cpp for this machine (both rebuild llama-cpp-python without pip's wheel cache, which
# ignores CMAKE_ARGS; the flags used are remembered in .venv, so a rerun rebuilds only when they change):
#   scripts\setup.ps1 -Cuda        (or $env:POSTTRAIN_CUDA = "1") with CUDA: needs the CUDA toolkit and its
#                                  Visual Studio integration; $env:POSTTRAIN_CUDA_ARCH = "89" picks the GPU
#                                  generation (default: this GPU's, from nvidia-smi)
#   $env:POSTTRAIN_LLAMA_CMAKE_ARGS = "..."   any llama.cpp CMake options
[CmdletBinding()]
param(
    [switch]$Test,
    [switch]$Cuda
)
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")

# Windows PowerShell does not stop when a program fails: every external command goes through this.
# A simple function (no param block), so arguments like -m and -e reach the program untouched.
function Invoke-Checked {
    $exe = $args[0]
    $rest = @($args | Select-Object -Skip 1)
    & $exe @rest
    if ($LASTEXITCODE -ne 0) { throw "failed (exit $LASTEXITCODE): $exe $($rest -join ' ')" }
}

if ($Test) {
    $chrome = @("chromium", "chrome", "google-chrome") | Where-Object { Get-Command $_ -ErrorAction SilentlyContinue }
    if (-not $chrome) {
        Write-Warning ("Chromium/Chrome is not on PATH, so the report-in-a-browser tests will be skipped. " +
            "Install it with: winget install --id Google.Chrome -e  and add the folder of chrome.exe to PATH.")
    }
    if (-not (Get-Command go -ErrorAction SilentlyContinue)) {
        Write-Warning ("Go is not on PATH, so the Ollama TEMPLATE tests will be skipped. " +
            "Install it with: winget install --id GoLang.Go -e  (then open a new terminal).")
    }
}

$venvPython = ".venv\Scripts\python.exe"
if (-not (Test-Path $venvPython)) {
    if ($env:PYTHON) {
        Invoke-Checked $env:PYTHON -m venv .venv
    } elseif (Get-Command py -ErrorAction SilentlyContinue) {
        # The Python launcher. Not `py -3`, which takes the newest Python 3 installed, maybe one that
        # torch or llama-cpp-python has no wheels for yet: the version posttrain is tested with.
        # Asked with errors not stopping the script: Windows PowerShell turns a native program's stderr
        # ("No suitable Python runtime found") into a terminating error under "Stop".
        $ErrorActionPreference = "Continue"
        & py -3.11 -c "import sys" 2>$null
        $has311 = $LASTEXITCODE -eq 0
        $ErrorActionPreference = "Stop"
        if ($has311) {
            Invoke-Checked py -3.11 -m venv .venv
        } else {
            Write-Warning ("Python 3.11 is not installed (py -0 lists what is); using the newest Python 3. " +
                "winget install --id Python.Python.3.11 -e installs 3.11.")
            Invoke-Checked py -3 -m venv .venv
        }
    } else {
        Invoke-Checked python -m venv .venv
    }
}
Invoke-Checked $venvPython -m pip install --quiet --upgrade pip
# Asked without an import error on stderr, which Windows PowerShell would turn into a terminating error.
& $venvPython -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch') else 1)"
if ($LASTEXITCODE -ne 0) {
    # On Windows, PyPI's torch wheel is the CPU build (CUDA builds come from PyTorch's own index).
    $torchVersion = if ($env:TORCH_VERSION) { $env:TORCH_VERSION } else { "2.13.0" }
    Invoke-Checked $venvPython -m pip install --quiet "torch==$torchVersion"
}

# llama-cpp-python has no wheel on PyPI: pip compiles llama.cpp, which needs Visual Studio's C++ build
# tools. Without them the build fails after minutes with a page of CMake output; say so first.
& $venvPython -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('llama_cpp') else 1)"
if ($LASTEXITCODE -ne 0 -or $Cuda -or $env:POSTTRAIN_CUDA -eq "1" -or $env:POSTTRAIN_LLAMA_CMAKE_ARGS) {
    $vswhere = Join-Path ${env:ProgramFiles(x86)} "Microsoft Visual Studio\Installer\vswhere.exe"
    $vcTools = $null
    if (Test-Path $vswhere) {
        $vcTools = & $vswhere -latest -products * -requires Microsoft.VisualStudio.Component.VC.Tools.x86.x64 -property installationPath
    }
    if (-not $vcTools -and -not (Get-Command cl -ErrorAction SilentlyContinue)) {
        throw ("llama-cpp-python compiles llama.cpp, which needs Visual Studio's C++ build tools: " +
            "winget install --id Microsoft.VisualStudio.2022.BuildTools -e --override `"--quiet --wait " +
            "--add Microsoft.VisualStudio.Workload.VCTools --includeRecommended`" (then run this script again)")
    }
}

# llama.cpp: the runtime (llama-cpp-python) is built from its sdist, and llama.cpp's converter, which the
# built wheel lacks, is taken from the SAME file after posttrain's install below. The sdist is downloaded
# once and kept in posttrain's cache (toolchain.kept_sdist_dir()): a rerun, a rebuild with other flags or a
# second clone downloads nothing, and pip's wheel cache knows the wheel built from a file at a path that
# stays the same. Only llama-cpp-python is built from source, its build backends come as wheels (never
# `--no-binary :all:`).
$cacheRoot = if ($env:POSTTRAIN_CACHE) { $env:POSTTRAIN_CACHE } elseif ($env:XDG_CACHE_HOME) {
    Join-Path $env:XDG_CACHE_HOME "posttrain" } else { Join-Path $env:LOCALAPPDATA "posttrain\cache" }
$sdistDir = Join-Path $cacheRoot "llama.cpp\sdist"
# Asked without an import error on stderr (see torch above): empty when llama-cpp-python is not installed.
$installed = "$(& $venvPython -c "import importlib.metadata as m; print(next((d.version for d in m.distributions() if (d.metadata['Name'] or '').lower().replace('_', '-') == 'llama-cpp-python'), ''))")".Trim()
$sdist = $null
if ($installed -and (Test-Path (Join-Path $sdistDir "llama_cpp_python-$installed.tar.gz"))) {
    $sdist = Join-Path $sdistDir "llama_cpp_python-$installed.tar.gz"
}
if (-not $sdist -and -not $installed -and (Test-Path $sdistDir)) {
    # A new .venv: the newest sdist an earlier setup kept, rather than a download.
    $kept = Get-ChildItem -Path $sdistDir -Filter "llama_cpp_python-*.tar.gz" |
        Sort-Object { try { [version]($_.Name -replace '^llama_cpp_python-(.+)\.tar\.gz$', '$1') } catch { [version]"0.0" } } |
        Select-Object -Last 1
    if ($kept) { $sdist = $kept.FullName }
}
if (-not $sdist) {
    # The version already installed, else the newest that posttrain accepts (pyproject.toml's requirement).
    $spec = if ($installed) { "llama-cpp-python==$installed" } else {
        "llama-cpp-python" + (Select-String -Path pyproject.toml -Pattern '"llama-cpp-python\[server\]([^"]*)"').Matches[0].Groups[1].Value
    }
    Write-Host "downloading the $spec sdist (~75 MB, once) ..."
    $dl = Join-Path ([System.IO.Path]::GetTempPath()) ("posttrain-sdist-" + [guid]::NewGuid())
    New-Item -ItemType Directory -Path $dl | Out-Null
    Invoke-Checked $venvPython -m pip download --quiet --no-deps --no-binary llama-cpp-python $spec -d $dl
    $file = Get-ChildItem -Path $dl -Filter "llama_cpp_python-*.tar.gz" | Select-Object -First 1
    if (-not $file) { throw "pip downloaded no llama-cpp-python sdist into $dl" }
    New-Item -ItemType Directory -Force -Path $sdistDir | Out-Null
    $sdist = Join-Path $sdistDir $file.Name
    Move-Item -Force $file.FullName $sdist
    Remove-Item -Recurse -Force $dl
}

$cmakeFlags = if ($env:POSTTRAIN_LLAMA_CMAKE_ARGS) { $env:POSTTRAIN_LLAMA_CMAKE_ARGS } else { "" }
if ($Cuda -or $env:POSTTRAIN_CUDA -eq "1") {
    $arch = $env:POSTTRAIN_CUDA_ARCH
    if (-not $arch -and (Get-Command nvidia-smi -ErrorAction SilentlyContinue)) {
        try {
            $cap = & nvidia-smi --query-gpu=compute_cap --format=csv,noheader | Select-Object -First 1
            if ("$cap" -match '^\s*\d+\.\d+\s*$') { $arch = ("$cap" -replace "[.\s]", "") }  # "9.0" -> 90
        } catch { }  # no compute capability to read: let CMake pick
    }
    if (-not $arch) { $arch = "native" }
    $cmakeFlags = "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch $cmakeFlags".Trim()
}
$builtWith = ".venv\.llama-cpp-cmake-args"
$previous = if (Test-Path $builtWith) { (Get-Content $builtWith -Raw).Trim() } else { "" }
if (-not $installed -or ($cmakeFlags -and $previous -ne $cmakeFlags)) {
    # Installed from the downloaded file itself, before posttrain's install would pick a version of its own.
    $pipFlags = @()
    if ($installed) { $pipFlags += @("--force-reinstall", "--no-deps") }
    if ($cmakeFlags) { $pipFlags += "--no-cache-dir" }  # pip's wheel cache ignores CMAKE_ARGS
    $with = if ($cmakeFlags) { " with CMAKE_ARGS=`"$cmakeFlags`"" } else { "" }
    Write-Host "building llama-cpp-python from $(Split-Path $sdist -Leaf)$with (llama.cpp: minutes; seconds from pip's wheel cache) ..."
    $started = Get-Date
    $savedCmakeArgs = $env:CMAKE_ARGS
    $env:CMAKE_ARGS = $cmakeFlags
    try {
        Invoke-Checked $venvPython -m pip install --quiet @pipFlags $sdist
    } finally {
        $env:CMAKE_ARGS = $savedCmakeArgs
    }
    Write-Host ("llama-cpp-python built and installed in {0:N0} s" -f ((Get-Date) - $started).TotalSeconds)
    if ($cmakeFlags) {
        Set-Content -Path $builtWith -Value $cmakeFlags -Encoding ascii
    } elseif (Test-Path $builtWith) {
        Remove-Item $builtWith
    }
} elseif (-not $cmakeFlags -and $previous) {
    Write-Warning "llama-cpp-python was built with CMAKE_ARGS=`"$previous`"; kept (delete $builtWith and .venv to go back)"
}

# -Test adds the optional parts the tests drive for real, as setup.sh --test does: Ray (a local cluster),
# MLflow and W&B (offline), PEFT (LoRA adapters).
$target = if ($Test) { ".[test,lora,track,ray]" } else { "." }
Invoke-Checked $venvPython -m pip install --quiet -e $target
# llama.cpp's converter from the sdist the runtime was built from (seconds; nothing when a rerun finds
# it), then the same checks `posttrain doctor` makes, so a missing piece shows here, not on the first run.
Invoke-Checked ".venv\Scripts\posttrain.exe" doctor --sdist $sdist --no-selftest
Invoke-Checked ".venv\Scripts\posttrain.exe" --version
