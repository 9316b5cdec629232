// Package contract holds only tests: walship's push and fetch contracts
// checked by running the built binary against versitygw through the fault
// proxy (internal/faultproxy). The figures in docs/RELIABILITY.md, section
// "Storage faults (S3 fault proxy)", come from these tests.
package contract
