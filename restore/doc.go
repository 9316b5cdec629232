// Package restore is point-in-time restore: the planner that picks the
// backup which can reach a target (a time, an LSN, a transaction, a named
// restore point, the end of the archive) along the timeline history and
// checks the WAL to it is archived, and the restore of that backup into a
// data directory: its chunks downloaded in parallel and verified, the tar
// streams unpacked safely, tablespaces mapped, and the recovery settings
// and signal file written. An incremental backup is restored from its
// chain: the full backup unpacked, each incremental streamed over it,
// INCREMENTAL.* files patched in place (package incremental).
package restore
