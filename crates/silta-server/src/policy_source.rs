//! Where the policy set comes from, and swapping in a new one on reload.
//!
//! The set is read from `policy.dir` (or the built-in copy of the repository's `policies/`
//! when none is configured), validated in full, and only then swapped in: a reload that fails
//! leaves the old set serving. Requests in flight keep the set they started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use silta_core::policy::{
    BUILTIN_FILES, FLOWS_FILE, POLICY_EXTENSION, Policies, PolicyError, PolicyErrors, SCHEMA_FILE,
    SourceFile,
};

/// Reads the files of a policy directory: the schema, `flows.toml` and every `*.cedar`.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyErrors> {
    let io = |what: &Path, e: std::io::Error| {
        PolicyErrors(vec![PolicyError {
            file: what.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        }])
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == SCHEMA_FILE || n == FLOWS_FILE || n.ends_with(POLICY_EXTENSION)
            })
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            Ok(SourceFile::new(p.display().to_string(), text))
        })
        .collect()
}

/// Loads the set in `dir`, or the built-in set.
pub fn load(dir: Option<&Path>) -> Result<Policies, PolicyErrors> {
    match dir {
        Some(dir) => Policies::load(&read_dir(dir)?),
        None => {
            let files: Vec<SourceFile> = BUILTIN_FILES
                .iter()
                .map(|(n, t)| SourceFile::new(format!("(built-in)/{n}"), *t))
                .collect();
            Policies::load(&files)
        }
    }
}

/// The policy set in force, shared by every request.
#[derive(Debug)]
pub struct PolicyHandle {
    dir: Option<PathBuf>,
    current: RwLock<Arc<Policies>>,
}

impl PolicyHandle {
    /// Loads the set from `dir` (or the built-in one).
    pub fn open(dir: Option<PathBuf>) -> Result<Self, PolicyErrors> {
        let policies = load(dir.as_deref())?;
        Ok(PolicyHandle {
            dir,
            current: RwLock::new(Arc::new(policies)),
        })
    }

    /// The set in force now.
    pub fn get(&self) -> Arc<Policies> {
        // A poisoned lock only means a writer panicked between two whole values; the value
        // inside is still a complete set.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads and validates the set again; swaps it in only if it is valid.
    ///
    /// `check` may refuse a set that is valid on its own but not with this gateway's
    /// configuration (a flow disclosing identity to an organisation without a key).
    pub fn reload(
        &self,
        check: impl Fn(&Policies) -> Result<(), String>,
    ) -> Result<Arc<Policies>, PolicyErrors> {
        let fresh = Arc::new(load(self.dir.as_deref())?);
        check(&fresh).map_err(|message| {
            PolicyErrors(vec![silta_core::policy::PolicyError {
                file: "flows.toml".to_owned(),
                line: None,
                column: None,
                message,
            }])
        })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Where the set is read from, for logs.
    pub fn describe(&self) -> String {
        self.dir
            .as_ref()
            .map_or_else(|| "built-in".to_owned(), |d| d.display().to_string())
    }
}
