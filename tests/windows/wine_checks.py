#!/usr/bin/env python3
"""Runs the cross-built epm-agent.exe under Wine and checks what a shop's
Windows PC would do with it: `config check`, `run` reading a ProLAN-501
through a COM port (a pseudo-terminal mapped as COM5 in the Wine prefix)
into its store, `status --json` on that store, and the service's life under
Wine's service manager (install, start, reload, stop, uninstall).

    wine_checks.py --exe target/.../epm-agent.exe --dll bcryptprimitives.dll \
                   --prefix DIR

The prefix is created on first use and reused (its `drive_c/ProgramData/
epm-agent` and the service are reset on every run). Exits non-zero when a
check fails; the last line is `windows: N passed, N failed`.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import prolan501  # noqa: E402

WINE = os.environ.get("WINE", "/usr/lib/wine/wine64")
WINESERVER = os.environ.get("WINESERVER", "/usr/lib/wine/wineserver")
COM_PORT = "COM5"
REMOTE_A, REMOTE_B, REMOTE_C = 0x301A0002, 0x301A0003, 0x301A0004

CONFIG = """\
[agent]
id = "wine-shop"
location = "Wine prefix"
# No data_dir: the Windows default, %ProgramData%\\epm-agent\\data.

[[device]]
name = "entrance"
model = "prolan-501"
port = "{port}"
question = "recommend"
keymap = {{ 1 = "yes", 2 = "neutral", 3 = "no" }}
min_interval_s = 0

[[sink]]
name = "day-files"
kind = "file"
path = 'C:\\ProgramData\\epm-agent\\export'
format = "ndjson"

[log]
level = "info"
"""

BAD_CONFIG = CONFIG.replace('min_interval_s = 0', 'min_interval_s = 0\nbaud = "fast"')


class Checks:
    def __init__(self):
        self.passed = []
        self.failed = []

    def check(self, name, condition, detail=""):
        if condition:
            self.passed.append(name)
            print(f"ok    {name}" + (f"  ({detail})" if detail else ""), flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL  {name}: {detail}", flush=True)
        return condition


class Wine:
    def __init__(self, prefix):
        self.prefix = prefix
        self.env = dict(os.environ)
        self.env.update(
            WINEPREFIX=str(prefix),
            WINEDEBUG="-all",
            WINEARCH="win64",
            DISPLAY="",
            # No Mono / Gecko installer dialogs while the prefix is made.
            WINEDLLOVERRIDES="mscoree,mshtml=",
            RUST_BACKTRACE="1",
        )
        self.env.pop("EPM_AGENT_CONFIG", None)
        self.env.pop("RUST_LOG", None)

    def drive_c(self):
        return self.prefix / "drive_c"

    def run(self, args, timeout=60):
        """Runs a Windows program to the end; returns (code, stdout, stderr).
        Output goes through files, not pipes: a Wine process may start
        helpers (services.exe, winedevice.exe) that inherit its handles and
        outlive it, and a pipe would not close until they end."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                code = subprocess.run(
                    [WINE, *args], env=self.env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        if code is None:
            stderr += f"\n(timed out after {timeout} s)"
        return code, stdout, stderr

    def spawn(self, args, log_path):
        log = open(log_path, "w")
        return subprocess.Popen(
            [WINE, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def prepare(self):
        """Makes the prefix once; starts a wineserver that stays for the run."""
        # A server left by an interrupted run would keep its old processes.
        self.shutdown()
        fresh = not (self.prefix / "system.reg").exists()
        if fresh:
            self.prefix.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            code, _, err = self.run(["wineboot", "-i"], timeout=300)
            if code != 0:
                raise SystemExit(f"wineboot -i failed ({code}): {err[-2000:]}")
            # Its server saves the new registry as it exits, a few seconds on.
            subprocess.run([WINESERVER, "-w"], env=self.env, check=False, timeout=120)
            print(f"..    made the Wine prefix {self.prefix} in {time.monotonic() - started:.0f} s")
        # One wineserver (and services.exe) for the whole run.
        subprocess.run([WINESERVER, "-p"], env=self.env, check=True)
        self.run(["wineboot"], timeout=300)

    def map_com_port(self, name, target):
        link = self.prefix / "dosdevices" / name.lower()
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)

    def shutdown(self):
        subprocess.run([WINESERVER, "-k"], env=self.env, check=False)
        subprocess.run([WINESERVER, "-w"], env=self.env, check=False, timeout=60)

    def reboot(self):
        """Ends every Windows process of the prefix (as a power cut would:
        Wine sends services no shutdown control), then boots it again."""
        self.shutdown()
        subprocess.run([WINESERVER, "-p"], env=self.env, check=True)
        self.run(["wineboot"], timeout=300)


def tail(text, lines=15):
    return "\n      ".join(text.strip().splitlines()[-lines:])


def status_json(wine, exe, checks, name):
    code, out, err = wine.run([exe, "status", "--json"])
    try:
        status = json.loads(out)
    except ValueError:
        checks.check(name, False, f"exit {code}, not JSON: {tail(out + err)}")
        return None
    return code, status


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exe", required=True, type=Path)
    parser.add_argument("--dll", required=True, type=Path)
    parser.add_argument("--prefix", required=True, type=Path)
    parser.add_argument("--no-service", action="store_true", help="skip the service checks")
    options = parser.parse_args()

    checks = Checks()
    wine = Wine(options.prefix.resolve())
    wine.prepare()
    program_data = wine.drive_c() / "ProgramData" / "epm-agent"
    bin_dir = wine.drive_c() / "epm-agent"
    receiver = None
    agent = None
    try:
        # A machine as an installer leaves it: the program in C:\epm-agent
        # (with the test-only DLL beside it), the configuration at the
        # Windows default path, nothing else.
        exe = r"C:\epm-agent\epm-agent.exe"
        # A service left by an interrupted run would hold the old files.
        if (bin_dir / "epm-agent.exe").exists():
            wine.run([exe, "service", "uninstall"], timeout=90)
        shutil.rmtree(program_data, ignore_errors=True)
        shutil.rmtree(wine.drive_c() / "users" / "Public" / "epm-agent", ignore_errors=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(options.exe, bin_dir / "epm-agent.exe")
        shutil.copy2(options.dll, bin_dir / "bcryptprimitives.dll")
        program_data.mkdir(parents=True)
        (program_data / "epm-agent.toml").write_text(CONFIG.format(port=COM_PORT))
        (program_data / "bad.toml").write_text(BAD_CONFIG.format(port=COM_PORT))

        receiver = prolan501.Receiver().start()
        wine.map_com_port(COM_PORT, receiver.slave_path)
        print(f"..    {COM_PORT} -> {receiver.slave_path} (emulated ProLAN-501)", flush=True)

        code, out, err = wine.run([exe, "--version"])
        checks.check("--version (std's ProcessPrng through the shim)", code == 0 and "epm-agent" in out,
                     out.strip() if code == 0 else f"exit {code}: {tail(err)}")

        code, out, err = wine.run([exe, "config", "check"])
        checks.check("config check (default %ProgramData% path, port COM5)",
                     code == 0 and "ok (1 device, 1 sink" in out and r"C:\ProgramData\epm-agent" in out,
                     out.strip() if code == 0 else f"exit {code}: {tail(out + err)}")

        code, out, err = wine.run([exe, "config", "check", "--config", r"C:\ProgramData\epm-agent\bad.toml"])
        checks.check("config check names the bad line and key", code == 2 and "device[1].baud" in err,
                     err.strip() if code == 2 else f"exit {code}: {tail(out + err)}")

        code, out, err = wine.run([exe, "service", "run"], timeout=30)
        checks.check("service run refuses a console", code == 1 and "service manager" in err,
                     err.strip() if code is not None else err)

        # --- run: the daemon in the foreground, reading COM5 -------------
        run_log = program_data.parent / "run.log"
        agent = wine.spawn([exe, "run"], run_log)
        opened = receiver.wait_for_queries(1, timeout_s=60)
        checks.check(f"run opens {COM_PORT} and sends QUERY", opened,
                     "the receiver answered with HELLO" if opened else tail(run_log.read_text()))
        presses = [(REMOTE_A, 1, 1), (REMOTE_A, 2, 2), (REMOTE_B, 3, 7)]
        if opened:
            for remote, key, counter in presses:
                receiver.press(remote, key, counter)
        acked = receiver.wait_for_acks([(r, c) for r, _, c in presses], timeout_s=30)
        checks.check("run stores 3 presses (9 radio copies) and ACKs each after commit", acked,
                     f"ACKs {acks(receiver)}" if acked
                     else f"ACKs {acks(receiver)}; log:\n      {tail(run_log.read_text())}")
        exported = wait_until(lambda: export_lines(program_data) >= 3, 15)
        checks.check("the file sink writes the presses to the day file", exported,
                     f"{export_lines(program_data)} lines in "
                     f"{[path.name for path in (program_data / 'export').glob('*')]}")
        # Ctrl-C: Wine turns SIGINT into the console control event.
        agent.send_signal(signal.SIGINT)
        try:
            code = agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            code = agent.wait()
        agent = None
        log = run_log.read_text(errors="replace")
        checks.check("run stops on Ctrl-C after committing", code == 0 and "everything read was committed" in log,
                     f"exit {code}" if code == 0 else f"exit {code}; log:\n      {tail(log)}")

        result = status_json(wine, exe, checks, "status --json after run")
        if result:
            code, status = result
            device = (status.get("devices") or [{}])[0]
            store = status.get("store", {})
            # The store also holds the agent's status events (start, stop).
            good = (store.get("events", 0) > 3 and device.get("presses") == 3
                    and device.get("duplicates") == 6 and device.get("port") == COM_PORT
                    and status.get("daemon", {}).get("running") is False)
            checks.check("status --json reads the store run left", good,
                         f"exit {code}, health {status.get('health')}, {store.get('events')} events in "
                         f"{store.get('path')}, device {device.get('name')} on {device.get('port')}: "
                         f"{device.get('presses')} presses, {device.get('duplicates')} duplicates, "
                         f"firmware {device.get('firmware')}" if good else json.dumps(status, indent=1)[:3000])
            # GetDiskFreeSpaceExW under the store's folder: a number, so
            # the "disk almost full" rule can see a full disk on Windows.
            free = store.get("free_disk_bytes")
            checks.check("status --json measures the free disk", isinstance(free, int) and free > 0,
                         f"free_disk_bytes {free!r}")
        if not options.no_service:
            service_checks(wine, exe, receiver, checks, program_data)
    finally:
        if agent is not None:
            os.killpg(agent.pid, signal.SIGKILL)
        wine.shutdown()
        if receiver is not None:
            receiver.close()

    print(f"windows: {len(checks.passed)} passed, {len(checks.failed)} failed", flush=True)
    return 1 if checks.failed else 0


def service_checks(wine, exe, receiver, checks, program_data):
    code, out, err = wine.run([exe, "service", "status"])
    checks.check("service status before install: not installed (exit 4)", code == 4, (out + err).strip())

    # Wine's services.exe gives services ProgramData=C:\users\Public (Windows:
    # C:\ProgramData): name the store's folder, so the service and `status`
    # share it whatever the variable says.
    config = program_data / "epm-agent.toml"
    config.write_text(config.read_text().replace(
        "# No data_dir", "data_dir = 'C:\\ProgramData\\epm-agent\\data'\n# Was: no data_dir"))
    code, out, err = wine.run([exe, "service", "install"])
    checks.check("service install", code == 0, tail(out + err, 8))
    if code != 0:
        return
    code, out, err = wine.run([exe, "service", "install"])
    checks.check("service install again says it is installed", code == 1 and "installed already" in err,
                 err.strip())
    code, out, err = wine.run([exe, "service", "status"])
    checks.check("service status after install: stopped (exit 3)", code == 3 and "starts     at boot" in out,
                 tail(out + err, 8))

    queries = receiver.queries
    code, out, err = wine.run([exe, "service", "start"], timeout=90)
    checks.check("service start", code == 0 and "is running" in out, (out + err).strip())
    if code == 0:
        logs_dir = service_logs_dir(wine, program_data)
        opened = receiver.wait_for_queries(queries + 1, timeout_s=60)
        checks.check(f"the service opens {COM_PORT}", opened)
        receiver.press(REMOTE_C, 1, 9)
        acked = receiver.wait_for_acks([(REMOTE_C, 9)], timeout_s=30)
        checks.check("the service stores a press and ACKs it", acked, f"ACKs {acks(receiver)}")
        code, out, err = wine.run([exe, "service", "status"])
        checks.check("service status while running (exit 0)", code == 0 and "is running (pid" in out,
                     out.splitlines()[0] if out else err.strip())
        code, out, err = wine.run([exe, "service", "start"])
        checks.check("service start while running", code == 0 and "already running" in out, (out + err).strip())

        code, out, err = wine.run([exe, "service", "reload"])
        reloaded = code == 0 and wait_until(
            lambda: "parameters changed: reloading" in read_logs(logs_dir), 10)
        checks.check("service reload sends ParamChange; the service reloads", reloaded,
                     (out + err).strip() if reloaded
                     else f"exit {code}: {(out + err).strip()}; log:\n      {tail(read_logs(logs_dir))}")

        code, out, err = wine.run([exe, "service", "stop"], timeout=90)
        checks.check("service stop commits and stops", code == 0 and "everything read was committed" in out,
                     (out + err).strip())
        log_text = read_logs(logs_dir)
        good = all(line in log_text for line in
                   ("service starting", "Stop: stopping", "everything read was committed", "service stopped"))
        where = "C:\\" + str(logs_dir.relative_to(wine.drive_c())).replace("/", "\\")
        checks.check("the service logs to a daily file", good,
                     f"{where}: {sorted(path.name for path in logs_dir.glob('*'))}" if good
                     else tail(log_text, 30))
        result = status_json(wine, exe, checks, "status --json after the service")
        if result:
            code, status = result
            presses = sum(device.get("presses", 0) for device in status.get("devices", []))
            checks.check("status --json counts the service's press", presses == 4, f"{presses} presses")

        # Installed to start at boot: a new Wine session starts it.
        queries = receiver.queries
        wine.reboot()
        code, out, err = wine.run([exe, "service", "status"])
        started = code == 0 and receiver.wait_for_queries(queries + 1, timeout_s=60)
        checks.check("the service starts at boot (a new Wine session)", started,
                     out.splitlines()[0] if out else err.strip())

        # A file that does not validate: the service stops with exit error 2.
        wine.run([exe, "service", "stop"], timeout=90)
        config.write_text(BAD_CONFIG.format(port=COM_PORT))
        code, out, err = wine.run([exe, "service", "start"], timeout=90)
        checks.check("service start with a bad configuration says why", code == 1
                     and "error 2: the configuration cannot be used" in err, (out + err).strip())
        code, out, err = wine.run([exe, "service", "status"])
        checks.check("service status shows the last exit", code == 3 and "last exit  error 2" in out,
                     tail(out + err, 8))
        log_text = read_logs(logs_dir)
        checks.check("the service logged the bad line and key", "key `device[1].baud`" in log_text,
                     tail(log_text, 3))

    code, out, err = wine.run([exe, "service", "uninstall"], timeout=90)
    checks.check("service uninstall", code == 0 and "service epm-agent" in out, (out + err).strip())
    code, out, err = wine.run([exe, "service", "status"])
    checks.check("service status after uninstall: not installed (exit 4)", code == 4, (out + err).strip())


def service_logs_dir(wine, program_data):
    """`%ProgramData%\\epm-agent\\logs` as the service sees it: C:\\ProgramData on
    Windows, C:\\users\\Public under Wine's services.exe."""
    candidates = [program_data / "logs", wine.drive_c() / "users" / "Public" / "epm-agent" / "logs"]
    wait_until(lambda: any(read_logs(path) for path in candidates), 10)
    for path in candidates:
        if read_logs(path):
            if path != candidates[0]:
                print(f"..    the service's %ProgramData% is {path.parent.parent} (a Wine quirk)", flush=True)
            return path
    return candidates[0]


def acks(receiver):
    return [f"{remote:08X}/{counter}" for remote, counter in receiver.acks]


def export_lines(program_data):
    return sum(len(path.read_text().splitlines()) for path in (program_data / "export").glob("*.ndjson"))


def read_logs(logs_dir):
    return "".join(path.read_text(errors="replace") for path in sorted(logs_dir.glob("*.log")))


def wait_until(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


if __name__ == "__main__":
    sys.exit(main())
