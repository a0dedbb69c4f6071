//! What the commands print for people and scripts, on standard output. A reader that stops
//! early (`silta keys show | head -1`) closes the pipe; the next write then ends the process
//! quietly, with the status a Unix tool killed by SIGPIPE reports, instead of a panic.

use std::io::Write;

/// The exit status of a process that wrote to a closed pipe: 128 + SIGPIPE (13), as a shell
/// reports `cat` or `yes` ended by the signal.
pub(crate) const CLOSED_PIPE_STATUS: i32 = 141;

/// `print!` for results: see the module docs.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// `println!` for results: see the module docs.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Writes `args` to standard output and flushes it, so that a closed pipe is found here and
/// not lost at exit. A closed pipe ends the process quietly; any other failure ends it with a
/// message, as the result cannot be delivered.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
        eprintln!("silta: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
