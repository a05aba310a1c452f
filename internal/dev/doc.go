// Package dev holds wxlogin's tooling, kept apart from the product so
// that a reader finds the service in cmd/ and the rest of internal/, and
// so that nothing here can link into a production binary.
//
// The product is the four binaries of cmd/ (edge, worker, wxlogin and
// fakewx) and the packages they import. Everything under dev/ exists to
// test, measure or demonstrate them:
//
//   - bench and wxbench: the performance benchmark (task bench);
//   - soak: the long run at a steady rate that fails if memory grows
//     (task soak);
//   - reliability: the fault, abuse and load suite, as tests;
//   - testbed: a real stack for tests (built with package stack), with
//     the helpers tests share;
//   - natstest: real NATS servers, single or clustered, for tests.
//
// Packages here may import package testing; product packages never
// import packages here. TestProductLinksNoTooling checks both.
package dev
