/*
 * status.c — what replication shows in .heapfs/ (registered with the core's status.c
 * before the mount tree is made): partner (the link and the replicated heaps; setting
 * user.heapfs.promote* on it is heapfsctl promote, user.heapfs.demote demote), verify (both copies compared, verify.c)
 * and the "role" of each heap in heaps/NAME and stats.
 * Locking: partner takes hfs.ns shared only to copy the heap list (hfs_heaps_get), the
 * link's figures under rg.lock (hfs_repl_status).
 */
#include <time.h>

#include "repl_i.h"

/* The replicated heaps of v, name -> role (no partner section: none), or NULL. */
static json_t *roles_json(struct hfs_heap **v, unsigned n)
{
	json_t *heaps = json_object();

	for (unsigned k = 0; heaps && k < n; k++)
		if (v[k]->repl && json_object_set_new(heaps, v[k]->pol.name,
						      json_string(hfs_repl_role(v[k])))) {
			json_decref(heaps);
			heaps = NULL;
		}
	return heaps;
}

/* Under a cluster manager (ha.c): this node's promotion score, and the gate. */
static int add_ha(json_t *j)
{
	return json_object_set_new(j, "score", json_integer(hfs_repl_score())) ||
	       json_object_set_new(j, "managed", json_boolean(hfs.conf->partner.managed)) ||
	       (ha_gate_name() &&
		json_object_set_new(j, "on_peer_lost", json_string(ha_gate_name())));
}

/* The link's privacy: its cipher, when its key last changed (UTC, a handshake or a
 * rekey; null before the first connection). */
static int add_privacy(json_t *j, const struct hfs_repl_status *rs)
{
	json_t *at = json_null();

	if (rs->key_rotated_ms) {
		char buf[32];
		time_t t = (time_t)(rs->key_rotated_ms / 1000);
		struct tm tm;

		strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
		at = json_string(buf);
	}
	return json_object_set_new(j, "cipher", json_string(rs->cipher)) ||
	       json_object_set_new(j, "key_rotated", at) ||
	       json_object_set_new(j, "rekeys", json_integer((json_int_t)rs->rekeys));
}

static json_t *partner_json(void)
{
	json_t *heaps, *j = NULL;
	struct hfs_repl_status rs;
	struct hfs_heap **v;
	unsigned n;

	v = hfs_heaps_get(&n);
	if (!v)
		return NULL;
	hfs_repl_status(&rs);
	heaps = roles_json(v, n);
	if (heaps)
		j = json_pack("{s:s, s:s?, s:s?, s:s?, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
			      "state", rs.state,
			      "node", hfs.conf->partner.present ? hfs.conf->partner.node : NULL,
			      "peer", rs.peer[0] ? rs.peer : NULL,
			      "connect", hfs.conf->partner.present ? hfs.conf->partner.connect : NULL,
			      "epoch", (json_int_t)rs.epoch, "lag_bytes", (json_int_t)rs.lag_bytes,
			      "sent_bytes", (json_int_t)rs.sent_bytes,
			      "recv_bytes", (json_int_t)rs.recv_bytes,
			      "resync_done", (json_int_t)rs.resync_done,
			      "resync_total", (json_int_t)rs.resync_total, "heaps", heaps);
	/* the privacy only with a cipher, the reason only when there is one, so the JSON of
	 * every other state stays as it was */
	if (j && (add_ha(j) || (rs.cipher[0] && add_privacy(j, &rs)) ||
		  (rs.reason[0] && json_object_set_new(j, "reason", json_string(rs.reason))))) {
		json_decref(j);
		j = NULL;
	}
	hfs_heaps_put(v, n);
	return j;
}

void hfs_repl_register(void)
{
	static struct hfs_status_file partner = { .name = "partner", .json = partner_json,
						  .setxattr = hfs_repl_setxattr };
	/* opening it hashes every replicated file here and asks the partner to: the mount's
	 * owner (and root) only */
	static struct hfs_status_file verify = { .name = "verify",
						 .json = hfs_repl_verify_json, .mode = 0400 };

	hfs_status_register(&partner);
	hfs_status_register(&verify);
	hfs_status_role(hfs_repl_role);
}
