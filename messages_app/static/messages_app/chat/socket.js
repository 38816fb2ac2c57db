/* The websocket of the open conversation: connects (session cookie), pings, reconnects with
 * jittered backoff, and stops for good on the close codes that mean "do not come back"
 * (4401 not signed in, 4403 banned, 4404 no such conversation). */

const PING_INTERVAL_MS = 25000;
const MAX_BACKOFF_MS = 15000;
const FINAL_CLOSE_CODES = new Set([4401, 4403, 4404]);

export class ChatSocket {
  /* Callbacks: onFrame(frame), onOpen({resumed}) after a (re)connect, onStatus(state, label)
   * with state idle|connecting|open|reconnecting|closed, onLost() when an open socket drops,
   * onFinalClose(code) for the codes above. */
  constructor({ path = "/ws/conversations/", onFrame, onOpen, onStatus, onLost, onFinalClose }) {
    this.path = path;
    this.onFrame = onFrame || (() => {});
    this.onOpen = onOpen || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onLost = onLost || (() => {});
    this.onFinalClose = onFinalClose || (() => {});
    this.ws = null;
    this.token = 0;
    this.conversationId = null;
    this.attempts = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.stopped = false;
    this.needsResync = false;
    window.addEventListener("online", () => {
      // Back online: skip the rest of the backoff wait.
      if (this.conversationId != null && !this.stopped && !this.ws && this.reconnectTimer) {
        this.attempts = Math.max(1, this.attempts);
        this._connect();
      }
    });
  }

  get isOpen() {
    return !!(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  open(conversationId) {
    this.close();
    this.conversationId = conversationId;
    this.stopped = false;
    this.attempts = 0;
    this.needsResync = false;
    this._connect();
  }

  /* Stop for good (until open() again), e.g. when the account is banned. */
  stop() {
    this.stopped = true;
  }

  close() {
    this.token += 1;
    this._clearTimers();
    if (this.ws) {
      try {
        this.ws.close(1000);
      } catch (e) {
        /* already closed */
      }
    }
    this.ws = null;
  }

  _clearTimers() {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.reconnectTimer = null;
    this.pingTimer = null;
  }

  _connect() {
    if (this.conversationId == null) return;
    this.close();
    const token = this.token;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const url = scheme + window.location.host + this.path + this.conversationId + "/";
    this.onStatus(
      this.attempts ? "reconnecting" : "connecting",
      this.attempts ? "Reconnecting…" : "Connecting…",
    );
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this._scheduleReconnect(token);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (token !== this.token) return;
      this.attempts = 0;
      this.onStatus("open", "Connected");
      this.pingTimer = setInterval(() => this.send({ type: "ping" }), PING_INTERVAL_MS);
      const resumed = this.needsResync;
      this.needsResync = false;
      this.onOpen({ resumed });
    };
    ws.onmessage = (event) => {
      if (token !== this.token) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (frame && typeof frame.type === "string") this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (token !== this.token) return;
      this._clearTimers();
      this.ws = null;
      this.onLost();
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.stopped = true;
        this.onFinalClose(event.code);
        return;
      }
      this._scheduleReconnect(token);
    };
  }

  _scheduleReconnect(token) {
    if (token !== this.token || this.conversationId == null || this.stopped) return;
    this.needsResync = true;
    const base = Math.min(MAX_BACKOFF_MS, 500 * Math.pow(2, this.attempts));
    const delay = Math.round(base * (0.5 + Math.random() * 0.5));
    this.attempts += 1;
    this.onStatus("reconnecting", "Reconnecting in " + Math.max(1, Math.round(delay / 1000)) + " s");
    this.reconnectTimer = setTimeout(() => {
      if (token === this.token) this._connect();
    }, delay);
  }
}
