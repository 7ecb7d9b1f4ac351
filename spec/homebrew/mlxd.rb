# Homebrew formula for mlxd on Apple silicon: the macOS arm64 release tarball, a PyInstaller
# one-folder bundle (mlxd next to its lib/). `make formula` (spec/make_formula.py) writes a copy
# with the version, url and sha256 of a release's tarball; the release workflow attaches it.
class Mlxd < Formula
  desc "Local OpenAI-compatible inference server for one MLX language model"
  homepage "https://github.com/mlxd/mlxd"
  url "https://github.com/mlxd/mlxd/releases/download/v0.1.0/mlxd-0.1.0-macos-arm64.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"

  # MLX runs on Metal, Apple silicon only; the macos-14 runner's wheels need macOS 14 or later.
  depends_on arch: :arm64
  depends_on macos: :sonoma

  def install
    # The executable finds lib/ next to its real path, so bin/ gets a symlink, not a copy.
    libexec.install "mlxd", "lib"
    bin.install_symlink libexec/"mlxd"
    pkgetc.install "mlxd.example.json"
    doc.install Dir["*.md"]
    pkgshare.install Dir["*.plist", "*.service"]
  end

  def post_install
    # Never overwrite the user's settings on upgrade.
    config = pkgetc/"config.json"
    cp pkgetc/"mlxd.example.json", config unless config.exist?
  end

  def caveats
    <<~EOS
      Serve a model in the foreground:
        mlxd /path/to/model-dir-or.gguf
      To run it as a service, set "model" in
        #{pkgetc}/config.json
      then: brew services start mlxd
      Logs: #{var}/log/mlxd.log; PID file: ~/.mlxd/mlxd-PORT.pid; stop with `mlxd --stop`.
    EOS
  end

  service do
    run [opt_bin/"mlxd", "--config", etc/"mlxd/config.json"]
    # Restart after a crash, not after a clean stop or a bad config (exit 1 or 2).
    keep_alive crashed: true
    working_dir var
    log_path var/"log/mlxd.log"
    error_log_path var/"log/mlxd.log"
  end

  test do
    assert_equal "mlxd #{version}", shell_output("#{bin}/mlxd --version").strip
    # --status with nothing running exits 3 without loading MLX.
    shell_output("#{bin}/mlxd --status --port 18765", 3)
  end
end
