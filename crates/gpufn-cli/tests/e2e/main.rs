//! End-to-end tests: real gpufn, real function processes, real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod abuse;
mod auth;
mod burst;
mod cli;
mod containers;
mod failures;
mod fc;
mod gateway;
mod hooks;
mod kube;
mod lifecycle;
mod metering;
mod restart;
mod schedules;
mod tasks;
