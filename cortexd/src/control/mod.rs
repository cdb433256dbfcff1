//! The control plane: the neuron client, the observed state (poller), the desired state (fleet
//! directory and watcher), executing and applying plans, the reconcile loop and its status. It
//! knows nothing of inference dialects; the gateway and the CLI build on it, never the reverse.

pub mod apply;
pub mod authority;
pub mod backoff;
pub mod cluster_status;
pub mod execute;
pub mod fleetdir;
pub mod fleetedit;
pub mod fleetwatch;
pub mod lastgood;
pub mod neuron_client;
pub mod poller;
pub mod reconcile;
pub mod reconciler;
pub mod status;
