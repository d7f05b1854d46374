//! Function Compute 3.0 compatibility that needs no server: FC function documents ↔ gpufn specs
//! ([`mapping`]). The server's FC API (`gpufn-server`, `fc/`) and the CLI's Serverless Devs files
//! (`gpufn deploy -f s.yaml`) both use it, so the CLI does not reach into the server for it.

pub mod mapping;
