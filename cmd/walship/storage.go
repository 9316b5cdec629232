package main

import (
	"context"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/config"
)

// openStorage opens the archive the configuration names.
func openStorage(ctx context.Context, cfg config.Config) (backends.Storage, error) {
	u, err := config.ParseArchive(cfg.Archive)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "file" {
		return fs.New(u.Path)
	}
	return s3.New(ctx, s3.Config{
		Bucket: u.Bucket, Prefix: u.Prefix,
		Endpoint: cfg.S3.Endpoint, Region: cfg.S3.Region, PathStyle: cfg.S3.PathStyle,
		StorageClass: cfg.S3.StorageClass, SSE: cfg.S3.SSE, SSEKMSKeyID: cfg.S3.SSEKMSKeyID,
		MaxAttempts: cfg.S3.MaxAttempts,
	})
}
