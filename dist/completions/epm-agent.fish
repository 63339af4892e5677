# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_epm_agent_global_optspecs
    string join \n config= h/help V/version
end

function __fish_epm_agent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_epm_agent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_epm_agent_using_subcommand
    set -l cmd (__fish_epm_agent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c epm-agent -n "__fish_epm_agent_needs_command" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_needs_command" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -s V -l version -d 'Print version'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "run" -d 'Run the agent in the foreground until SIGINT/SIGTERM'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "demo" -d 'The whole pipeline on this machine: simulated ProLAN-202 and ProLAN-501 devices, a temporary store and a local reporting backend, shown live. Needs no configuration file and no hardware'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "config" -d 'Work with the configuration file'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "deadletter" -d 'See and re-send events a backend rejected (dead letters)'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "status" -d 'What the running (or stopped) agent is doing; exit 0 ok, 1 warning, 2 critical, 3 unknown (for Nagios, Zabbix, a Windows task)'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "report" -d 'Counts per answer and the loyalty indices (IEL, NPS) from the store'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "devices" -d 'Serial ports on this machine, with USB ids; `--probe` finds ProLAN hardware'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "tail" -d 'Follow new presses as they are stored'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "export" -d 'Write stored events to a file or stdout'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "service" -d 'The Windows service: install, uninstall, start, stop, reload, status'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "completions" -d 'Shell completions on stdout (the package\'s files are made with it)'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "man" -d 'The manual page (roff) on stdout (the package\'s file is made with it)'
complete -c epm-agent -n "__fish_epm_agent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand run" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand run" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand demo" -l duration-s -d 'Stop after this many seconds (default: at Ctrl-C)' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand demo" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand demo" -l flaky -d 'The backend answers about 1 request in 5 with 503: watch the retries, and still no press counted twice'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand demo" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and not __fish_seen_subcommand_from check help" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and not __fish_seen_subcommand_from check help" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "check" -d 'Validate the file: exit 0, or name the line and key that is wrong and exit 2'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and __fish_seen_subcommand_from check" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Validate the file: exit 0, or name the line and key that is wrong and exit 2'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and not __fish_seen_subcommand_from list retry help" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and not __fish_seen_subcommand_from list retry help" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and not __fish_seen_subcommand_from list retry help" -f -a "list" -d 'Show the events a backend rejected on their own'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and not __fish_seen_subcommand_from list retry help" -f -a "retry" -d 'Send them again (the running agent does it within seconds)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and not __fish_seen_subcommand_from list retry help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from list" -l sink -d 'Only this sink\'s' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from list" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from list" -l json -d 'JSON instead of a table'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from retry" -l sink -d 'Only this sink\'s' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from retry" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from help" -f -a "list" -d 'Show the events a backend rejected on their own'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Send them again (the running agent does it within seconds)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand deadletter; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand status" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand status" -l json -d 'Print JSON (the contract\'s fields and more) instead of text'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand status" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l since -d 'Start of the range, included: a date (2026-11-01, local midnight), a local time (2026-11-01T09:30), an RFC 3339 instant, today, yesterday, or an age (7d, 24h, 30m) [default: the oldest press]' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l until -d 'End of the range, left out; the same forms as --since [default: the newest press]' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l by -d 'One row per local day, local hour of the day (00-23, over all the days of the range), device, question or unit' -r -f -a "day\t'The shop\'s local calendar day'
hour\t'The shop\'s local hour of the day, 00 to 23, over all days'
device\t''
question\t''
unit\t''"
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l chart -d 'Also draw the IEL per day (with its 95 % interval) and the presses per hour of the day into this SVG file' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l compare -d 'Set the last PERIOD (7d, 24h, 30d: whole days or hours), ending at --until or now, against the PERIOD before it: each index with its interval, the change, and whether it is larger than the noise' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l json -d 'JSON instead of a table'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -l csv -d 'CSV instead of a table'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand report" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -l port -d 'Look at this port only, and ask it (repeatable): for a port the operating system does not list, or a built-in port known to hold a ProLAN device' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -l probe -d 'Ask the USB serial ports for their identity (ProLAN-202 at 9600 baud, ProLAN-501 at 115200) and print a [[device]] block for each that answers'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -l probe-all -d 'Like --probe, and ask built-in (non-USB) ports too. Careful: on a POS PC those hold receipt printers and fiscal registers'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -l json -d 'JSON instead of a table'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand devices" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -s n -l lines -d 'Show the last N presses first' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -l max-events -d 'Exit after printing this many events (for tests and scripts)' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -l for-s -d 'Exit after following for this many seconds (for tests and scripts)' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -l no-follow -d 'Print the last presses and exit instead of following'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -l json -d 'One JSON event per line (the upload-v1 fields)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand tail" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -l since -d 'From this time on: a date (2026-11-01), a local time (2026-11-01T09:30), an RFC 3339 instant, today, yesterday, or an age (7d, 24h, 30m) [default: the oldest event]' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -l until -d 'Up to, not including, this time (same forms as --since) [default: now]' -r
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -l format -d 'csv (with a header line) or ndjson (one JSON event per line) [default: ndjson for an --output ending in .ndjson or .jsonl, else csv]' -r -f -a "csv\t''
ndjson\t''"
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -s o -l output -d 'Write to this file, replacing it only once the export is complete [default: stdout]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand export" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "install" -d 'Register the agent with the service manager as `epm-agent`, running as LocalSystem with this `--config` (checked first), started at boot and restarted after a failure'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "uninstall" -d 'Stop the service if it runs, then remove it (the store, the configuration and the logs stay)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "start" -d 'Start the installed service and wait until it runs'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "stop" -d 'Stop the service and wait until everything read is committed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "reload" -d 'Make the running service read its configuration again (the service manager\'s param-change control, as `sc control epm-agent paramchange` sends it)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "status" -d 'The service\'s state, pid, start type and command line; exit 0 running, 3 not running, 4 not installed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "run" -d 'What the service manager launches (`epm-agent.exe service run --config FILE`); it cannot run from a console: use `epm-agent run`'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall start stop reload status run help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from install" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from install" -l manual -d 'Start only when asked (`service start`), not at boot'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from install" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from start" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from stop" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from reload" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from reload" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from status" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from run" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "install" -d 'Register the agent with the service manager as `epm-agent`, running as LocalSystem with this `--config` (checked first), started at boot and restarted after a failure'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "uninstall" -d 'Stop the service if it runs, then remove it (the store, the configuration and the logs stay)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start the installed service and wait until it runs'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Stop the service and wait until everything read is committed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "reload" -d 'Make the running service read its configuration again (the service manager\'s param-change control, as `sc control epm-agent paramchange` sends it)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "status" -d 'The service\'s state, pid, start type and command line; exit 0 running, 3 not running, 4 not installed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "run" -d 'What the service manager launches (`epm-agent.exe service run --config FILE`); it cannot run from a console: use `epm-agent run`'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand completions" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand completions" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand man" -l config -d 'The configuration file [default: $EPM_AGENT_CONFIG, else /etc/epm-agent/epm-agent.toml, or %ProgramData%\\epm-agent\\epm-agent.toml on Windows]' -r -F
complete -c epm-agent -n "__fish_epm_agent_using_subcommand man" -s h -l help -d 'Print help'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "run" -d 'Run the agent in the foreground until SIGINT/SIGTERM'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "demo" -d 'The whole pipeline on this machine: simulated ProLAN-202 and ProLAN-501 devices, a temporary store and a local reporting backend, shown live. Needs no configuration file and no hardware'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "config" -d 'Work with the configuration file'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "deadletter" -d 'See and re-send events a backend rejected (dead letters)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "status" -d 'What the running (or stopped) agent is doing; exit 0 ok, 1 warning, 2 critical, 3 unknown (for Nagios, Zabbix, a Windows task)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "report" -d 'Counts per answer and the loyalty indices (IEL, NPS) from the store'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "devices" -d 'Serial ports on this machine, with USB ids; `--probe` finds ProLAN hardware'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "tail" -d 'Follow new presses as they are stored'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "export" -d 'Write stored events to a file or stdout'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "service" -d 'The Windows service: install, uninstall, start, stop, reload, status'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "completions" -d 'Shell completions on stdout (the package\'s files are made with it)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "man" -d 'The manual page (roff) on stdout (the package\'s file is made with it)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and not __fish_seen_subcommand_from run demo config deadletter status report devices tail export service completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Validate the file: exit 0, or name the line and key that is wrong and exit 2'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from deadletter" -f -a "list" -d 'Show the events a backend rejected on their own'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from deadletter" -f -a "retry" -d 'Send them again (the running agent does it within seconds)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "install" -d 'Register the agent with the service manager as `epm-agent`, running as LocalSystem with this `--config` (checked first), started at boot and restarted after a failure'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "uninstall" -d 'Stop the service if it runs, then remove it (the store, the configuration and the logs stay)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "start" -d 'Start the installed service and wait until it runs'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "stop" -d 'Stop the service and wait until everything read is committed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "reload" -d 'Make the running service read its configuration again (the service manager\'s param-change control, as `sc control epm-agent paramchange` sends it)'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "status" -d 'The service\'s state, pid, start type and command line; exit 0 running, 3 not running, 4 not installed'
complete -c epm-agent -n "__fish_epm_agent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "run" -d 'What the service manager launches (`epm-agent.exe service run --config FILE`); it cannot run from a console: use `epm-agent run`'
