//! `niks3 pin add|remove|list`: named roots that garbage collection never collects, managed directly in
//! the database `niks3 serve` uses (like `niks3 token`), so only whoever may reach that database pins.
//! Each change is recorded in the audit trail with who made it (`local:<user>`).

use anyhow::Context as _;
use niks3_nix::store_path::StoreDir;
use niks3_server::config::DbArgs;
use niks3_server::db::pins::PinInfo;
use niks3_storage::ObjectKey;

/// `niks3 pin …`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Pin a store path the cache holds: GC keeps its whole closure, however old its pushes get, until the
    /// pin is removed. Adding an existing name points that pin at the new path.
    Add {
        /// A name for the pin, e.g. `release-2026-12` (letters, digits, `.`, `_`, `@`, `-`).
        name: String,
        /// The store path, as pushed (e.g. /nix/store/…-hello-2.12; not a path inside it).
        path: String,
        /// The Nix store directory of the cache.
        #[arg(long, env = "NIKS3_NIX_STORE_DIR", default_value = "/nix/store")]
        nix_store_dir: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a pin: its closure is then collected like any other once nothing else keeps it.
    Remove {
        /// The pin's name.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the pins (name, store path, when and by whom).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Runs `niks3 pin …`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let now = chrono::Utc::now();
        let who = super::audit::local_operator();
        match cmd {
            Command::Add { name, path, nix_store_dir, db } => {
                niks3_server::db::pins::validate_name(&name)?;
                let store_dir = StoreDir::new(&nix_store_dir).context("--nix-store-dir")?;
                let store_path = store_dir.parse_path(path.trim_end_matches('/'))?;
                let shown = store_dir.display(&store_path);
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                let replaced = db.pin(&name, &ObjectKey::narinfo(&store_path), &shown, &who, now).await?;
                match replaced {
                    Some(old) if old.what() != shown => {
                        println!("pinned {shown} as {name:?} (instead of {}); GC keeps its closure", old.what());
                    }
                    _ => println!("pinned {shown} as {name:?}; GC keeps its closure until `niks3 pin remove {name}`"),
                }
                Ok(())
            }
            Command::Remove { name, db } => {
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                let pin = db.unpin(&name, &who, now).await?;
                println!("removed pin {name:?} of {}; GC collects its closure once nothing else keeps it", pin.what());
                Ok(())
            }
            Command::List { db } => {
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                print!("{}", render(&db.pins().await?));
                Ok(())
            }
        }
    })
}

/// The table `niks3 pin list` prints (UTC times, `-` for an unknown author).
fn render(pins: &[PinInfo]) -> String {
    if pins.is_empty() {
        return "no pins\n".to_owned();
    }
    let rows: Vec<[String; 4]> = pins
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.created_at.format("%Y-%m-%d %H:%M").to_string(),
                p.created_by.clone().unwrap_or_else(|| "-".to_owned()),
                p.what().to_owned(),
            ]
        })
        .collect();
    super::table(["NAME", "PINNED (UTC)", "BY", "STORE PATH"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_shows_the_path_and_who_pinned_it() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").expect("time").to_utc();
        let pin = |name: &str, path: Option<&str>, by: Option<&str>| PinInfo {
            name: name.to_owned(),
            root: "0123456789abcdfghijklmnpqrsvwxyz.narinfo".to_owned(),
            store_path: path.map(str::to_owned),
            created_at: t0,
            created_by: by.map(str::to_owned),
        };
        let text = render(&[
            pin("release", Some("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello"), Some("local:ops")),
            pin("old", None, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME     PINNED (UTC)      BY         STORE PATH", "{text}");
        assert!(lines[1].starts_with("release  2026-12-07 10:00  local:ops  /nix/store/"), "{text}");
        assert!(lines[2].ends_with("-          0123456789abcdfghijklmnpqrsvwxyz.narinfo"), "{text}");
        assert_eq!(render(&[]), "no pins\n");
    }
}
