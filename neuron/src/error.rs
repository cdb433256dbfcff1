//! `ApiError`: every refusal of the neuron API, with its HTTP status and stable code, rendered
//! as [`plans::wire::ErrorBody`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plans::wire::{ErrorBody, ErrorDetail, code};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "model source {0:?} is outside models_dir (absolute paths, `..` and symlinks leaving it are refused)"
    )]
    PathOutsideModelsDir(String),
    #[error("model source {0:?} does not exist in models_dir")]
    SourceNotFound(String),
    #[error("harness {0:?} is not defined in neuron.toml")]
    UnknownHarness(String),
    /// The message says which harness and which argument.
    #[error("{0}")]
    ArgsNotAllowed(String),
    #[error("device {0} does not exist on this neuron")]
    UnknownDevice(u32),
    #[error("the neuron changed since it was observed (generation is now {current})")]
    GenerationMismatch { current: u64 },
    /// A lifecycle call from an older cluster leader (or without a term once one was seen).
    #[error("{}", fenced_message(*current, *presented))]
    Fenced { current: u64, presented: Option<u64> },
    /// The neuron could not persist its state (the fencing term) before acting.
    #[error("{0}")]
    StateNotSaved(String),
    #[error("model {0:?} is already loaded with a different profile; unload it first")]
    ProfileConflict(String),
    #[error("model {0:?} is being unloaded")]
    ModelUnloading(String),
    /// An inference request for a model that is draining before it stops.
    #[error("model {0:?} is being unloaded")]
    ModelDraining(String),
    #[error("model {0:?} is not loaded on this neuron")]
    ModelNotFound(String),
    #[error("model {0:?} is still loading")]
    ModelLoading(String),
    #[error("model {model:?} failed: {error}")]
    ModelFailed { model: String, error: String },
    #[error("no free engine port in the configured port_range")]
    NoFreePort,
    #[error("the engine did not answer: {0}")]
    Upstream(String),
    #[error("the neuron is shutting down")]
    ShuttingDown,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_)
            | ApiError::PathOutsideModelsDir(_)
            | ApiError::SourceNotFound(_)
            | ApiError::UnknownHarness(_)
            | ApiError::ArgsNotAllowed(_)
            | ApiError::UnknownDevice(_) => StatusCode::BAD_REQUEST,
            ApiError::GenerationMismatch { .. }
            | ApiError::Fenced { .. }
            | ApiError::ProfileConflict(_)
            | ApiError::ModelUnloading(_) => StatusCode::CONFLICT,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ModelLoading(_)
            | ApiError::ModelDraining(_)
            | ApiError::ModelFailed { .. }
            | ApiError::NoFreePort
            | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::StateNotSaved(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code (documented in docs/neuron.md).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => code::UNAUTHORIZED,
            ApiError::BadRequest(_) => code::BAD_REQUEST,
            ApiError::PathOutsideModelsDir(_) => code::PATH_OUTSIDE_MODELS_DIR,
            ApiError::SourceNotFound(_) => code::SOURCE_NOT_FOUND,
            ApiError::UnknownHarness(_) => code::UNKNOWN_HARNESS,
            ApiError::ArgsNotAllowed(_) => code::ARGS_NOT_ALLOWED,
            ApiError::UnknownDevice(_) => code::UNKNOWN_DEVICE,
            ApiError::GenerationMismatch { .. } => code::GENERATION_MISMATCH,
            ApiError::Fenced { .. } => code::FENCED,
            ApiError::StateNotSaved(_) => code::STATE_NOT_SAVED,
            ApiError::ProfileConflict(_) => code::PROFILE_CONFLICT,
            ApiError::ModelUnloading(_) | ApiError::ModelDraining(_) => code::MODEL_UNLOADING,
            ApiError::ModelNotFound(_) => code::MODEL_NOT_FOUND,
            ApiError::ModelLoading(_) => code::MODEL_LOADING,
            ApiError::ModelFailed { .. } => code::MODEL_FAILED,
            ApiError::NoFreePort => code::NO_FREE_PORT,
            ApiError::Upstream(_) => code::UPSTREAM_ERROR,
            ApiError::ShuttingDown => code::SHUTTING_DOWN,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let generation = match self {
            ApiError::GenerationMismatch { current } => Some(*current),
            _ => None,
        };
        let term = match self {
            ApiError::Fenced { current, .. } => Some(*current),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail { code: self.code().to_owned(), message: self.to_string(), generation, term },
        }
    }
}

fn fenced_message(current: u64, presented: Option<u64>) -> String {
    match presented {
        Some(term) => format!(
            "fenced: a newer cortex leader holds term {current}; this call carries term {term} (its sender is no longer the leader)"
        ),
        None => format!(
            "fenced: a cortex cluster manages this neuron (term {current}); lifecycle calls without its term are refused (act through the cluster: docs/operations.md)"
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}
