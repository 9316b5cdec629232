// Package sealed is walship's stored-object format: a fixed header naming
// the codec, the original size and the SHA-256 of the original bytes,
// followed by the compressed body (zstd, s2, gzip or none, in frames that
// compress in parallel). Every object walship writes, WAL, backup chunks
// and small records alike, is sealed, so that every read is checked end to
// end. It knows nothing of WAL or of storage.
package sealed
