package embednats

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// The all-in-one's accounts, after the model of deploy/nats/accounts.conf.
// An account is a separate subject space: a client sees only its own
// account's messages and what that account imports, and permissions then
// narrow what each user may publish and subscribe within it.
const (
	// AccountWorker holds the worker, its micro service and its
	// JetStream buckets; it exports the requester subjects.
	AccountWorker = "WXLOGIN"
	// AccountEdge holds the in-process HTTP edge.
	AccountEdge = "EDGE"
	// AccountAnonymous holds every client that connects without
	// credentials: requesters of the open subjects only.
	AccountAnonymous = "APPS"
	// accountServicePrefix starts the name of each credentialed user's
	// own account (SERVICE_1, ...: numbered, so that no user name can
	// clash with another account), which keeps one service from reading
	// another's replies.
	accountServicePrefix = "SERVICE_"
)

// Endpoints under the subject prefix. Open ones answer for the code or
// token in the request; trusted ones act for any openid the body names,
// so only the edge and credentialed services may call them.
var (
	openEndpoints    = []string{protocol.EndpointName, "session", "jwks"}
	trustedEndpoints = []string{"decrypt", "phone"}
)

// Access is the all-in-one server's accounts and users: privileged
// in-process users for the edge and the worker, with key pairs made at
// start that exist only in this process's memory; an anonymous requester
// for every client that brings no credentials; and the operator's
// credentialed services. Give it to Start in Options.Access.
type Access struct {
	prefix       string
	users        map[string]string
	edge, worker nkeys.KeyPair
}

// NewAccess makes the access model for subject prefix (NATS_SUBJECT_PREFIX)
// and the operator's service users (name to password or bcrypt hash).
func NewAccess(prefix string, users map[string]string) (*Access, error) {
	for name, pw := range users {
		if name == "" || pw == "" {
			return nil, errors.New("embedded nats: a service user needs a name and a password")
		}
	}
	a := &Access{prefix: prefix, users: users}
	var err error
	if a.edge, err = nkeys.CreateUser(); err != nil {
		return nil, fmt.Errorf("embedded nats: making the edge's key: %w", err)
	}
	if a.worker, err = nkeys.CreateUser(); err != nil {
		return nil, fmt.Errorf("embedded nats: making the worker's key: %w", err)
	}
	return a, nil
}

// Edge is the connect option of the in-process edge.
func (a *Access) Edge() nats.Option { return signWith(a.edge) }

// Worker is the connect option of the in-process worker.
func (a *Access) Worker() nats.Option { return signWith(a.worker) }

func signWith(kp nkeys.KeyPair) nats.Option {
	pub, _ := kp.PublicKey() // a pair made by CreateUser always has one
	return nats.Nkey(pub, kp.Sign)
}

// configure puts the accounts and users into opts.
func (a *Access) configure(opts *server.Options) error {
	worker := server.NewAccount(AccountWorker)
	edge := server.NewAccount(AccountEdge)
	anon := server.NewAccount(AccountAnonymous)
	names := make([]string, 0, len(a.users))
	for name := range a.users {
		names = append(names, name)
	}
	sort.Strings(names)
	services := make([]*server.Account, len(names))
	for i := range names {
		services[i] = server.NewAccount(accountServicePrefix + strconv.Itoa(i+1))
	}
	trusted := append([]*server.Account{edge}, services...)

	open, all := a.subjects(openEndpoints), a.subjects(slices.Concat(openEndpoints, trustedEndpoints))
	var errs []error
	// Exports: the open subjects to any account, the trusted ones to the
	// edge and the services only, discovery to the edge (its readiness
	// probe; every worker answers, so the reply is a stream).
	for _, s := range open {
		errs = append(errs, worker.AddServiceExport(s, nil))
	}
	for _, s := range a.subjects(trustedEndpoints) {
		errs = append(errs, worker.AddServiceExport(s, trusted))
	}
	discovery := "$SRV.INFO." + protocol.ServiceName
	errs = append(errs, worker.AddServiceExportWithResponse(discovery, server.Streamed, []*server.Account{edge}))
	for _, s := range open {
		errs = append(errs, anon.AddServiceImport(worker, s, s))
	}
	for _, acc := range trusted {
		for _, s := range all {
			errs = append(errs, acc.AddServiceImport(worker, s, s))
		}
	}
	errs = append(errs, edge.AddServiceImport(worker, discovery, discovery))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("embedded nats: accounts: %w", err)
	}

	// The edge and the worker are this process's own code and alone in
	// their accounts, so they have no permissions beyond the account
	// boundary: the worker's JetStream stays open to it whatever buckets
	// it adds. An anonymous client is mapped to a user whose key is
	// thrown away; it may only ask and read replies in its own account.
	anonKey, err := nkeys.CreateUser()
	if err != nil {
		return fmt.Errorf("embedded nats: making the anonymous user's key: %w", err)
	}
	anonPub, _ := anonKey.PublicKey()
	edgePub, _ := a.edge.PublicKey()
	workerPub, _ := a.worker.PublicKey()
	opts.Accounts = append([]*server.Account{worker, edge, anon}, services...)
	opts.Nkeys = []*server.NkeyUser{
		{Nkey: workerPub, Account: worker},
		{Nkey: edgePub, Account: edge},
		{Nkey: anonPub, Account: anon, Permissions: requester(open)},
	}
	opts.NoAuthUser = anonPub
	for i, name := range names {
		opts.Users = append(opts.Users, &server.User{
			Username: name, Password: a.users[name], Account: services[i], Permissions: requester(all),
		})
	}
	return nil
}

// enableJetStream turns JetStream on for the worker's account once the
// server runs: nats-server keeps an account's JetStream limits private,
// so accounts built in code get it through the running server.
func (a *Access) enableJetStream(s *server.Server) error {
	acc, err := s.LookupAccount(AccountWorker)
	if err != nil {
		return fmt.Errorf("embedded nats: %w", err)
	}
	if err := acc.EnableJetStream(nil, nil); err != nil {
		return fmt.Errorf("embedded nats: JetStream for %s: %w", AccountWorker, err)
	}
	return nil
}

// requester may send requests to subjects and receive their replies in
// its own inboxes, and nothing else.
func requester(subjects []string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: subjects},
		Subscribe: &server.SubjectPermission{Allow: []string{nats.InboxPrefix + ">"}},
	}
}

func (a *Access) subjects(endpoints []string) []string {
	s := make([]string, len(endpoints))
	for i, e := range endpoints {
		s[i] = a.prefix + "." + e
	}
	return s
}
