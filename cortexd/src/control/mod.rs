//! The control plane: the neuron client, the observed state (poller), the desired state (fleet
//! directory and watcher), executing and applying plans, the reconcile loop and its status. It
//! knows nothing of inference dialects; the gateway and the CLI build on it, never the reverse.

pub(crate) mod apply;
pub(crate) mod authority;
pub(crate) mod backoff;
pub(crate) mod cluster_status;
pub(crate) mod decisions;
pub(crate) mod execute;
pub(crate) mod fleetdir;
pub(crate) mod fleetedit;
pub(crate) mod fleetwatch;
pub(crate) mod lastgood;
pub(crate) mod neuron_client;
pub(crate) mod poller;
pub(crate) mod reconcile;
pub(crate) mod reconciler;
pub(crate) mod status;
