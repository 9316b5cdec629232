// Package s3 stores an archive in an S3-compatible bucket with
// aws-sdk-go-v2. Every request is tried once: the SDK's retryer is off, and
// retries, backoff and deadlines are the backends/retry policy's, applied
// once around the whole Storage. This package decides what each S3 answer
// means: ErrNotFound only for S3's own NoSuchKey on a GET (a 404 without
// it, such as a proxy's HTML page, is an unreachable archive), or a 404 to
// a HEAD, which has no body to tell the two apart; ErrExists for a failed
// condition; Permanent for what a retry cannot fix.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"github.com/walship/walship/backends"
)

// Config says where the bucket is and how to write to it. Credentials are
// not here: they come from the standard AWS chain (environment, shared
// config and profile, web identity, instance role).
type Config struct {
	Bucket       string
	Prefix       string // without leading or trailing slash
	Endpoint     string // custom endpoint URL for S3-compatible servers; empty for AWS
	Region       string
	PathStyle    bool
	StorageClass string // e.g. STANDARD_IA; empty for the bucket default
	SSE          string // "", "AES256" or "aws:kms"
	SSEKMSKeyID  string
	PartSize     int64 // bodies above this go multipart; 0 means 64 MiB
	// Log receives the SDK's own warnings (credential fallbacks, clock
	// skew) as one structured line each; nil means slog.Default().
	Log *slog.Logger
}

// Storage is a bucket, or a prefix inside one.
type Storage struct {
	cfg    Config
	client *s3.Client
}

// New builds a client. It makes no request; the first operation finds out
// whether the bucket is reachable.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if cfg.Bucket == "" {
		return nil, backends.Permanent(errors.New("s3: bucket name is empty"))
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	if cfg.Prefix != "" {
		if err := backends.ValidKey(cfg.Prefix); err != nil {
			return nil, backends.Permanent(fmt.Errorf("s3 prefix: %w", err))
		}
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = 64 << 20
	}
	if cfg.PartSize < 5<<20 {
		return nil, backends.Permanent(fmt.Errorf("s3: part size %d below the 5 MiB S3 minimum", cfg.PartSize))
	}
	switch cfg.SSE {
	case "", "AES256", "aws:kms":
	default:
		return nil, backends.Permanent(fmt.Errorf("s3: server-side encryption %q: want AES256 or aws:kms", cfg.SSE))
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 10 * time.Second }).
		WithTransportOptions(func(t *http.Transport) {
			t.ResponseHeaderTimeout = 60 * time.Second
			t.MaxIdleConnsPerHost = 16
		})
	awsCfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion(cfg.Region),
		config.WithHTTPClient(httpClient),
		config.WithLogger(sdkLogger(cfg.Log)),
		// One try per request: backends/retry retries, in one place.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	)
	if err != nil {
		return nil, backends.Permanent(fmt.Errorf("s3: load AWS configuration: %w", err))
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// walship checks integrity end to end with the SHA-256 in every
		// sealed object; the SDK's default CRC trailers break several
		// S3-compatible servers, so send checksums only where required.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &Storage{cfg: cfg, client: client}, nil
}

func (s *Storage) String() string {
	if s.cfg.Prefix == "" {
		return "s3://" + s.cfg.Bucket
	}
	return "s3://" + s.cfg.Bucket + "/" + s.cfg.Prefix
}

func (s *Storage) key(k string) (string, error) {
	if err := backends.ValidKey(k); err != nil {
		return "", backends.Permanent(err)
	}
	if s.cfg.Prefix == "" {
		return k, nil
	}
	return s.cfg.Prefix + "/" + k, nil
}

// PutIfAbsent implements backends.Storage with a conditional write
// (If-None-Match: *), which S3 and current S3-compatible servers honour
// atomically.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, true)
}

// Put implements backends.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, false)
}

func (s *Storage) put(ctx context.Context, key string, body io.ReadSeeker, size int64, exclusive bool) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("s3 put %q: rewind body: %w", key, err)
	}
	if size > s.cfg.PartSize {
		return s.putMultipart(ctx, key, k, body, size, exclusive)
	}
	// Read the body into memory first: the SDK must be able to resend it
	// on retry and needs its exact length, and a body that cannot deliver
	// size bytes must fail here, before anything is sent.
	buf, err := readExactly(body, size)
	if err != nil {
		return fmt.Errorf("s3 put %q: %w", key, err)
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.cfg.Bucket),
		Key:           aws.String(k),
		Body:          bytes.NewReader(buf),
		ContentLength: aws.Int64(size),
		ContentType:   aws.String("application/octet-stream"),
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	in.StorageClass, in.ServerSideEncryption, in.SSEKMSKeyId = s.newObjectOptions()
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return s.classify("put", key, err)
	}
	return nil
}

// newObjectOptions are the storage class and server-side encryption (and
// its KMS key) of every object written; the SDK sends no header for an
// empty value.
func (s *Storage) newObjectOptions() (types.StorageClass, types.ServerSideEncryption, *string) {
	var kmsKey *string
	if s.cfg.SSE != "" && s.cfg.SSEKMSKeyID != "" {
		kmsKey = aws.String(s.cfg.SSEKMSKeyID)
	}
	return types.StorageClass(s.cfg.StorageClass), types.ServerSideEncryption(s.cfg.SSE), kmsKey
}

func readExactly(r io.Reader, size int64) ([]byte, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("body shorter than %d bytes: %w", size, err)
	}
	var one [1]byte
	if n, _ := r.Read(one[:]); n != 0 {
		return nil, fmt.Errorf("body longer than %d bytes", size)
	}
	return buf, nil
}

// putMultipart uploads a large body in parts. The object appears only when
// CompleteMultipartUpload succeeds, conditionally when exclusive; any failure
// aborts the upload so no parts are left to bill or to confuse a listing.
func (s *Storage) putMultipart(ctx context.Context, key, k string, body io.ReadSeeker, size int64, exclusive bool) (err error) {
	if exclusive {
		// Refuse early, before uploading gigabytes; the conditional
		// completion below is what actually decides.
		if _, err := s.Stat(ctx, key); err == nil {
			return fmt.Errorf("s3 put %q: %w", key, backends.ErrExists)
		} else if !errors.Is(err, backends.ErrNotFound) {
			return err
		}
	}
	create := &s3.CreateMultipartUploadInput{
		Bucket:      aws.String(s.cfg.Bucket),
		Key:         aws.String(k),
		ContentType: aws.String("application/octet-stream"),
	}
	create.StorageClass, create.ServerSideEncryption, create.SSEKMSKeyId = s.newObjectOptions()
	up, err := s.client.CreateMultipartUpload(ctx, create)
	if err != nil {
		return s.classify("put", key, err)
	}
	defer func() {
		if err != nil {
			// Abort with a fresh context: the caller's may be what failed.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, _ = s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(s.cfg.Bucket), Key: aws.String(k), UploadId: up.UploadId,
			})
		}
	}()
	var parts []types.CompletedPart
	for off, num := int64(0), int32(1); off < size; off, num = off+s.cfg.PartSize, num+1 {
		n := min(s.cfg.PartSize, size-off)
		buf, err := readExactly(io.LimitReader(body, n), n)
		if err != nil {
			return fmt.Errorf("s3 put %q part %d: %w", key, num, err)
		}
		out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(s.cfg.Bucket), Key: aws.String(k), UploadId: up.UploadId,
			PartNumber: aws.Int32(num), Body: bytes.NewReader(buf), ContentLength: aws.Int64(n),
		})
		if err != nil {
			return s.classify("put part", key, err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
	}
	var extra [1]byte
	if n, _ := body.Read(extra[:]); n != 0 {
		return backends.Permanent(fmt.Errorf("s3 put %q: body longer than %d bytes", key, size))
	}
	complete := &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(s.cfg.Bucket), Key: aws.String(k), UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if exclusive {
		complete.IfNoneMatch = aws.String("*")
	}
	if _, err = s.client.CompleteMultipartUpload(ctx, complete); err != nil {
		return s.classify("put", key, err)
	}
	return nil
}

// Get implements backends.Storage.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, backends.ObjectInfo{}, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(k)})
	if err != nil {
		return nil, backends.ObjectInfo{}, s.classify("get", key, err)
	}
	info := backends.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), Modified: aws.ToTime(out.LastModified)}
	return out.Body, info, nil
}

// Stat implements backends.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return backends.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(k)})
	if err != nil {
		return backends.ObjectInfo{}, s.classify("stat", key, err)
	}
	return backends.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), Modified: aws.ToTime(out.LastModified)}, nil
}

// List implements backends.Storage. S3 returns keys in UTF-8 binary order,
// which is the order of Go strings.
func (s *Storage) List(ctx context.Context, prefix string, fn func(backends.ObjectInfo) error) error {
	full := prefix
	if s.cfg.Prefix != "" {
		full = s.cfg.Prefix + "/" + prefix
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.cfg.Bucket), Prefix: aws.String(full),
	})
	strip := 0
	if s.cfg.Prefix != "" {
		strip = len(s.cfg.Prefix) + 1
	}
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			// A listing error is an error, never "nothing there".
			err = s.classify("list", prefix, err)
			if errors.Is(err, backends.ErrNotFound) {
				return backends.Permanent(fmt.Errorf("s3 list %q: bucket %q does not exist", prefix, s.cfg.Bucket))
			}
			return err
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)[strip:]
			if err := fn(backends.ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements backends.Storage, up to 1000 keys per request.
func (s *Storage) Delete(ctx context.Context, keys ...string) error {
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 1000)]
		keys = keys[len(batch):]
		ids := make([]types.ObjectIdentifier, 0, len(batch))
		for _, key := range batch {
			k, err := s.key(key)
			if err != nil {
				return err
			}
			ids = append(ids, types.ObjectIdentifier{Key: aws.String(k)})
		}
		out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(s.cfg.Bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return s.classify("delete", batch[0], err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			return fmt.Errorf("s3 delete %q: %s: %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
		}
	}
	return nil
}

// classify turns SDK errors into the backends vocabulary: ErrNotFound only
// for a missing key (see the package doc), ErrExists for a failed
// condition, Permanent for what a retry cannot fix; everything else is
// retryable.
func (s *Storage) classify(op, key string, err error) error {
	if s.absent(op, err) {
		return fmt.Errorf("s3 %s %q: %w", op, key, backends.ErrNotFound)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		switch code {
		case "PreconditionFailed":
			return fmt.Errorf("s3 %s %q: %w", op, key, backends.ErrExists)
		case "NoSuchBucket":
			return backends.Permanent(fmt.Errorf("s3 %s %q: bucket %q does not exist", op, key, s.cfg.Bucket))
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName",
			"AllAccessDisabled", "InvalidObjectState", "NotImplemented", "InvalidArgument", "InvalidRequest",
			"MethodNotAllowed", "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed":
			return backends.Permanent(fmt.Errorf("s3 %s %q: %s: %s", op, key, code, apiErr.ErrorMessage()))
		}
		if op == "get" && httpStatus(err) == http.StatusNotFound {
			return fmt.Errorf("s3 %s %q: a 404 that is not S3's NoSuchKey (a proxy or a wrong endpoint?): %s: %s",
				op, key, code, apiErr.ErrorMessage())
		}
		return fmt.Errorf("s3 %s %q: %s: %s", op, key, code, apiErr.ErrorMessage())
	}
	return fmt.Errorf("s3 %s %q: %w", op, key, err)
}

// absent: only S3's own NoSuchKey on a GET (whose error body says so), and
// a 404 on a HEAD (which has no body at all) mean the key does not exist.
func (s *Storage) absent(op string, err error) bool {
	var nsk *types.NoSuchKey
	var apiErr smithy.APIError
	switch op {
	case "get":
		return errors.As(err, &nsk) || (errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchKey")
	case "stat":
		var nf *types.NotFound
		return errors.As(err, &nf) || errors.As(err, &nsk) || httpStatus(err) == http.StatusNotFound
	}
	return false
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// CreateBucket creates the bucket if it does not exist. walship itself never
// creates buckets (a typo must not silently start a new archive); this is for
// tests and set-up scripts.
func (s *Storage) CreateBucket(ctx context.Context) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err != nil && !errors.As(err, &owned) && !errors.As(err, &exists) {
		return s.classify("create bucket", s.cfg.Bucket, err)
	}
	return nil
}

// sdkLogger sends the SDK's messages into slog instead of its own
// "SDK <time> WARN ..." lines on stderr.
func sdkLogger(log *slog.Logger) logging.Logger {
	if log == nil {
		log = slog.Default()
	}
	// The SDK's logger is handed no context.
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		msg := "s3 client: " + fmt.Sprintf(format, v...)
		if c == logging.Warn {
			log.Warn(msg)
		} else {
			log.Debug(msg)
		}
	})
}
