package localmongo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// FerretDB 1.24's PostgreSQL layout, which the index mirror depends on:
// one schema per MongoDB database, holding a metadata table with one row
// per collection ({_id: collection, table: table name, indexes: [{key:
// {field: 1, ...}}]}) and one table per collection whose documents are in
// the jsonb column _jsonb. TestFerretDBLayout fails when an upgrade
// changes it.
const (
	metadataTable = "_ferretdb_database_metadata"
	docColumn     = "_jsonb"
)

// FerretDB pushes an equality filter on field f down as
// `_jsonb->'f' @> value`; its own btree indexes cannot serve `@>`, a GIN
// index with jsonb_path_ops on the same expression can. The mirror gives
// every collection such an index on _id and on the first field of each
// MongoDB index the application created, so the indexes an application
// declares are the ones that serve it, as on a real MongoDB.
type mirrorIndex struct {
	Schema, Table, Field string
}

// Name is the PostgreSQL index name: readable where it fits, unique by hash.
func (m mirrorIndex) Name() string {
	h := sha256.Sum256([]byte(m.Schema + "\x00" + m.Table + "\x00" + m.Field))
	base := m.Table + "_" + strings.NewReplacer(".", "_", "$", "_").Replace(m.Field)
	if len(base) > 40 {
		base = base[:40]
	}
	return base + "_gin_" + hex.EncodeToString(h[:6])
}

// expr is the indexed expression, exactly as FerretDB writes its filters
// (`->` for a top-level field, `#>` with a path for a dotted one).
func (m mirrorIndex) expr() string {
	if strings.Contains(m.Field, ".") {
		parts := strings.Split(m.Field, ".")
		for i, p := range parts {
			parts[i] = `"` + strings.ReplaceAll(p, `"`, `\"`) + `"`
		}
		return fmt.Sprintf("(%s #> '{%s}')", docColumn, strings.ReplaceAll(strings.Join(parts, ","), "'", "''"))
	}
	return fmt.Sprintf("(%s -> '%s')", docColumn, strings.ReplaceAll(m.Field, "'", "''"))
}

// wantedIndexes lists the GIN indexes every FerretDB collection should have.
func wantedIndexes(ctx context.Context, pool *pgxpool.Pool) ([]mirrorIndex, error) {
	rows, err := pool.Query(ctx, `SELECT table_schema FROM information_schema.tables WHERE table_name = $1`, metadataTable)
	if err != nil {
		return nil, fmt.Errorf("localmongo: list databases: %w", err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("localmongo: list databases: %w", err)
	}
	var out []mirrorIndex
	for _, schema := range schemas {
		// The first key of every index. FerretDB keeps a document's key
		// order in its schema ("$s"), jsonb itself does not.
		q := fmt.Sprintf(`SELECT m.%[1]s->>'table',
			COALESCE(array_agg(DISTINCT i->'$s'->'p'->'key'->'$s'->'$k'->>0), '{}')
			FROM %[2]s AS m
			LEFT JOIN LATERAL jsonb_array_elements(m.%[1]s->'$s'->'p'->'indexes'->'i') AS i ON true
			GROUP BY 1`, docColumn, pgx.Identifier{schema, metadataTable}.Sanitize())
		rows, err := pool.Query(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("localmongo: metadata of %s: %w", schema, err)
		}
		type coll struct {
			Table  string
			Fields []*string
		}
		colls, err := pgx.CollectRows(rows, pgx.RowToStructByPos[coll])
		if err != nil {
			return nil, fmt.Errorf("localmongo: metadata of %s: %w", schema, err)
		}
		for _, c := range colls {
			seen := map[string]bool{"_id": true}
			out = append(out, mirrorIndex{schema, c.Table, "_id"})
			for _, f := range c.Fields {
				if f == nil || seen[*f] {
					continue
				}
				seen[*f] = true
				out = append(out, mirrorIndex{schema, c.Table, *f})
			}
		}
	}
	return out, nil
}

// syncIndexes creates the missing mirror indexes. A build interrupted
// earlier leaves an invalid index behind; it is dropped and built again.
// CONCURRENTLY keeps the collection writable while a large table is indexed.
// idled (may be nil) is told each FerretDB index made idle.
func syncIndexes(ctx context.Context, pool *pgxpool.Pool, created func(mirrorIndex), idled func(schema, name string)) error {
	want, err := wantedIndexes(ctx, pool)
	if err != nil {
		return err
	}
	for _, m := range want {
		var valid *bool
		err := pool.QueryRow(ctx, `SELECT i.indisvalid FROM pg_index i
			JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2`, m.Schema, m.Name()).Scan(&valid)
		switch {
		case err == nil && valid != nil && *valid:
			continue
		case err == nil:
			if _, err := pool.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+pgx.Identifier{m.Schema, m.Name()}.Sanitize()); err != nil {
				return fmt.Errorf("localmongo: drop invalid index %s: %w", m.Name(), err)
			}
		case err != pgx.ErrNoRows:
			return fmt.Errorf("localmongo: index %s: %w", m.Name(), err)
		}
		q := fmt.Sprintf("CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s USING gin (%s jsonb_path_ops) WITH (fastupdate = off)",
			pgx.Identifier{m.Name()}.Sanitize(), pgx.Identifier{m.Schema, m.Table}.Sanitize(), m.expr())
		if _, err := pool.Exec(ctx, q); err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				continue // the collection was dropped meanwhile
			}
			return fmt.Errorf("localmongo: create index %s: %w", m.Name(), err)
		}
		if created != nil {
			created(m)
		}
	}
	return idleFerretIndexes(ctx, pool, idled)
}

// idleFerretIndexes turns FerretDB's own secondary indexes into partial
// indexes on `false`, which PostgreSQL never has to update. FerretDB 1.24
// builds a btree on the indexed expressions for every MongoDB index, but
// its filters are `@>` (only the GIN twins above serve them) and it sorts
// in Go, so no query ever reads one; each still cost every insert an
// index update (three of the annotator's insert cost on PostgreSQL, as
// much as the rest together). The index keeps its name and columns, so
// FerretDB's metadata stays true: a dropIndexes or a collection drop
// finds what it expects. Unique indexes (_id and any the application
// declares unique) are left alone: they enforce uniqueness.
func idleFerretIndexes(ctx context.Context, pool *pgxpool.Pool, idled func(schema, name string)) error {
	rows, err := pool.Query(ctx, `SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid)
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_am a ON a.oid = c.relam
		WHERE a.amname = 'btree' AND NOT i.indisunique AND i.indpred IS NULL AND i.indexprs IS NOT NULL
		AND n.nspname IN (SELECT table_schema FROM information_schema.tables WHERE table_name = $1)`, metadataTable)
	if err != nil {
		return fmt.Errorf("localmongo: list FerretDB indexes: %w", err)
	}
	type index struct{ Schema, Name, Def string }
	idx, err := pgx.CollectRows(rows, pgx.RowToStructByPos[index])
	if err != nil {
		return fmt.Errorf("localmongo: list FerretDB indexes: %w", err)
	}
	for _, ix := range idx {
		def, ok := strings.CutPrefix(ix.Def, "CREATE INDEX ")
		if !ok {
			continue
		}
		// One transaction: the name never goes missing, whatever stops
		// the mirror. A new collection's index is built on an empty table;
		// an old store's is rebuilt once, holding the table for that time.
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "DROP INDEX "+pgx.Identifier{ix.Schema, ix.Name}.Sanitize()); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "CREATE INDEX "+def+" WHERE false")
			return err
		})
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				continue // dropped meanwhile
			}
			return fmt.Errorf("localmongo: idle index %s.%s: %w", ix.Schema, ix.Name, err)
		}
		if idled != nil {
			idled(ix.Schema, ix.Name)
		}
	}
	return nil
}
