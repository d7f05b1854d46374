//! The function spec: what a user writes in `gpufn.yaml`, and the validated type the platform runs.
//!
//! Parsing and validation are separate steps on purpose (the firecracker habit): [`RawSpec`] mirrors
//! the document field for field (unknown fields are errors), and [`FunctionSpec`] is the only type the
//! rest of gpufn accepts. A `FunctionSpec` can only be built by [`RawSpec::validate`], so every rule
//! below holds wherever one is found.

mod raw;
mod strict;
mod validate;

pub use raw::{RawAsync, RawAuth, RawGpu, RawHealthCheck, RawRegistryAuth, RawScaling, RawSpec};
pub use validate::{
    AsyncConfig, ContainerSpec, FieldError, FunctionSpec, GpuRequest, HealthCheck, KeepAliveMode,
    RegistryAuth, Runtime, Scaling, SpecError, TriggerAuth, check_http_url, is_secret_name,
    parse_json, parse_yaml,
};
