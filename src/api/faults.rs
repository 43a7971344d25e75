//! What went wrong inside a resource's runtime on its worker, in its report and status: the
//! panics caught (counted, the work started again, the resource's neighbours untouched).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Panics caught in this resource's work since its worker started (each was counted and
    /// the work started again; a ferry bug worth reporting with the worker's log).
    #[serde(default)]
    pub panics: u64,
    /// The last one's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_panic: Option<String>,
}

impl Faults {
    /// Nothing to show (kept out of reports and status).
    pub fn is_none(faults: &Option<Self>) -> bool {
        faults.as_ref().is_none_or(|f| f.panics == 0)
    }
}
