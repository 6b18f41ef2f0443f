# Set up posttrain in .\.venv on Windows, as scripts/setup.sh does on Linux: the CPU build of torch
# first, then posttrain with its dependencies. llama-cpp-python compiles llama.cpp from source the first
# time (it needs Visual Studio's C++ build tools and CMake); pip's wheel cache makes later installs fast.
#
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1          posttrain itself
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1 -Test    and the test extras; it says how to
#                                                                      get Chromium (the HTML report is
#                                                                      rendered in it) and Go (Ollama's
#                                                                      TEMPLATEs run with text/template)
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
        Invoke-Checked py -3 -m venv .venv  # the Python launcher: the newest Python 3 installed
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

# llama.cpp built with the flags asked for, before posttrain's install would take the cached CPU wheel.
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
if ($cmakeFlags -and $previous -ne $cmakeFlags) {
    Write-Host "building llama-cpp-python with CMAKE_ARGS=`"$cmakeFlags`" (minutes) ..."
    $savedCmakeArgs = $env:CMAKE_ARGS
    $env:CMAKE_ARGS = $cmakeFlags
    try {
        Invoke-Checked $venvPython -m pip install --quiet --no-cache-dir --force-reinstall --no-deps `
            "llama-cpp-python[server]>=0.3.16"
    } finally {
        $env:CMAKE_ARGS = $savedCmakeArgs
    }
    Set-Content -Path $builtWith -Value $cmakeFlags -Encoding ascii
} elseif (-not $cmakeFlags -and $previous) {
    Write-Warning "llama-cpp-python was built with CMAKE_ARGS=`"$previous`"; kept (delete $builtWith and .venv to go back)"
}

$target = if ($Test) { ".[test]" } else { "." }
Invoke-Checked $venvPython -m pip install --quiet -e $target
Invoke-Checked ".venv\Scripts\posttrain.exe" --version
