//! Model source resolution: a load request may only name a file or folder inside `models_dir`
//! (no absolute paths, no `..`, symlinks resolved and re-checked). Security invariant of §8.

use std::path::{Component, Path, PathBuf};

use crate::error::ApiError;

/// Resolve `source` (relative to the canonical `models_dir`). When `must_exist` is false (a
/// simulated engine reads nothing), a missing path is accepted after the lexical checks; an
/// existing one is still resolved and must stay inside.
pub fn resolve(models_dir: &Path, source: &str, must_exist: bool) -> Result<PathBuf, ApiError> {
    if source.trim().is_empty() {
        return Err(ApiError::BadRequest("profile.source must not be empty".to_owned()));
    }
    let relative = Path::new(source);
    let lexically_inside = !relative.is_absolute()
        && relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !lexically_inside {
        return Err(ApiError::PathOutsideModelsDir(source.to_owned()));
    }
    let joined = models_dir.join(relative);
    match std::fs::canonicalize(&joined) {
        Ok(resolved) if resolved.starts_with(models_dir) => Ok(resolved),
        Ok(_) => Err(ApiError::PathOutsideModelsDir(source.to_owned())),
        // A dangling symlink is not "missing": where it points is unknown, so refuse it.
        Err(_) if joined.symlink_metadata().is_ok() => Err(ApiError::PathOutsideModelsDir(source.to_owned())),
        Err(_) if !must_exist => Ok(joined),
        Err(_) => Err(ApiError::SourceNotFound(source.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<PathBuf, ApiError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(err) => err.code(),
        }
    }

    #[test]
    fn only_paths_inside_models_dir_resolve() {
        let root = tempfile::tempdir().expect("tempdir");
        let models = root.path().join("models");
        std::fs::create_dir_all(models.join("sub")).expect("mkdir");
        std::fs::write(models.join("sub/m.gguf"), b"x").expect("write");
        std::fs::write(root.path().join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret"), models.join("escape.gguf")).expect("symlink");
        std::os::unix::fs::symlink(models.join("sub/m.gguf"), models.join("inside.gguf")).expect("symlink");
        std::os::unix::fs::symlink(root.path().join("nothing"), models.join("dangling.gguf"))
            .expect("symlink");
        let models = std::fs::canonicalize(&models).expect("canonical");

        assert_eq!(code(resolve(&models, "sub/m.gguf", true)), "ok");
        assert_eq!(code(resolve(&models, "./sub/m.gguf", true)), "ok");
        assert_eq!(code(resolve(&models, "inside.gguf", true)), "ok");
        assert_eq!(code(resolve(&models, "../secret", true)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "sub/../../secret", true)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "/etc/passwd", true)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "escape.gguf", true)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "escape.gguf", false)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "dangling.gguf", false)), "path_outside_models_dir");
        assert_eq!(code(resolve(&models, "missing.gguf", true)), "source_not_found");
        assert_eq!(code(resolve(&models, "missing.gguf", false)), "ok");
        assert_eq!(code(resolve(&models, "", false)), "bad_request");
    }
}
