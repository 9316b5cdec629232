package main

import (
	"context"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/config"
)

// openStorage opens the archive the configuration names, under the one
// retry and deadline policy every storage call goes through.
func openStorage(ctx context.Context, cfg config.Config) (backends.Storage, error) {
	u, err := config.ParseArchive(cfg.Archive)
	if err != nil {
		return nil, err
	}
	var store backends.Storage
	if u.Scheme == "file" {
		store, err = fs.New(u.Path)
	} else {
		store, err = s3.New(ctx, s3.Config{
			Bucket: u.Bucket, Prefix: u.Prefix,
			Endpoint: cfg.S3.Endpoint, Region: cfg.S3.Region, PathStyle: cfg.S3.PathStyle,
			StorageClass: cfg.S3.StorageClass, SSE: cfg.S3.SSE, SSEKMSKeyID: cfg.S3.SSEKMSKeyID,
		})
	}
	if err != nil {
		return nil, err
	}
	return retry.New(store, retry.Options{
		Attempts: cfg.S3.MaxAttempts, AttemptTimeout: cfg.StallTimeout, StallTimeout: cfg.StallTimeout,
	}), nil
}
