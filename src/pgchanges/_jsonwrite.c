/* Change.to_json at C speed: one pass from a Change to its UTF-8 JSON, with no dict built on the way.
 *
 * The reference is the Python path in pgchanges/change.py (``Change._encoded`` with
 * ``valuecodec.encode_row_shallow``, written by a ``json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
 * allow_nan=False, default=valuecodec.nested_plain)``); tests/unit/test_jsonwrite.py checks that both write
 * the same bytes, property-tested over nested values. Why C: the forwarder spends a fifth of its time in
 * to_json (py-spy, bench/results/forward.md), most of it building two dicts per change and running the
 * standard encoder's chunk list over them.
 *
 * Rules, the standard encoder's: strings are escaped as json.dumps(ensure_ascii=False) does (", \, \n, \r,
 * \t, \b, \f, other control characters as \u00xx; everything else as its UTF-8); ints as int.__repr__,
 * floats as float.__repr__. Where the standard encoder would raise (a NaN inside a json value, a key that is
 * not a string), this raises ValueError or TypeError too, and the caller takes the exact Python walk. Values
 * that are not JSON go through the same Python functions as the reference: a row's tagged types through
 * valuecodec's table of encoders, anything else through encode_value, values nested in json objects through
 * nested_plain.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

static PyObject *Tagged = NULL;      /* {exact type: (tag, encode)}: valuecodec.TAGGED_EXACT */
static PyObject *EncodeValue = NULL; /* valuecodec.encode_value: value -> (plain, tag) */
static PyObject *NestedPlain = NULL; /* valuecodec.nested_plain: value -> plain */
/* The last commit time written and its isoformat(): every change of a transaction has the same datetime object,
 * and isoformat() was a third of the time per change. Held, so the identity cannot be reused. */
static PyObject *LastTime = NULL;
static PyObject *LastIso = NULL;

#define CHANGE_FIELDS 12 /* pgchanges.change.Change */

/* -- an output buffer ------------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int grow(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const char *text, Py_ssize_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->data + b->len, text, n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, text) put((b), (text), (Py_ssize_t)(sizeof(text) - 1))

/* -- JSON values, as the standard encoder writes them ------------------------------------------------------ */

static int put_string(Buf *b, PyObject *text) {
    PyObject *utf8 = NULL;
    const unsigned char *s;
    Py_ssize_t n;
    if (PyUnicode_IS_ASCII(text)) {
        s = (const unsigned char *)PyUnicode_DATA(text);
        n = PyUnicode_GET_LENGTH(text);
    } else {
        utf8 = PyUnicode_AsUTF8String(text); /* a lone surrogate: UnicodeEncodeError, a ValueError */
        if (utf8 == NULL) return -1;
        s = (const unsigned char *)PyBytes_AS_STRING(utf8);
        n = PyBytes_GET_SIZE(utf8);
    }
    int failed = grow(b, n + 2) < 0;
    if (!failed) b->data[b->len++] = '"';
    Py_ssize_t run = 0; /* start of the bytes not written yet */
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        failed = put(b, (const char *)s + run, i - run) < 0;
        run = i + 1;
        if (failed) break;
        switch (c) {
            case '"': failed = PUT_LITERAL(b, "\\\"") < 0; break;
            case '\\': failed = PUT_LITERAL(b, "\\\\") < 0; break;
            case '\n': failed = PUT_LITERAL(b, "\\n") < 0; break;
            case '\r': failed = PUT_LITERAL(b, "\\r") < 0; break;
            case '\t': failed = PUT_LITERAL(b, "\\t") < 0; break;
            case '\b': failed = PUT_LITERAL(b, "\\b") < 0; break;
            case '\f': failed = PUT_LITERAL(b, "\\f") < 0; break;
            default: {
                char escaped[7];
                snprintf(escaped, sizeof escaped, "\\u%04x", c);
                failed = put(b, escaped, 6) < 0;
            }
        }
    }
    if (!failed) failed = put(b, (const char *)s + run, n - run) < 0 || PUT_LITERAL(b, "\"") < 0;
    Py_XDECREF(utf8);
    return failed ? -1 : 0;
}

static int put_repr(Buf *b, PyObject *text) {
    if (text == NULL) return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    int result = s == NULL ? -1 : put(b, s, n);
    Py_DECREF(text);
    return result;
}

static int put_int(Buf *b, PyObject *value) {
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            char digits[24];
            int n = snprintf(digits, sizeof digits, "%lld", v);
            return put(b, digits, n);
        }
        PyErr_Clear();
    }
    return put_repr(b, PyLong_Type.tp_repr(value)); /* int.__repr__, also for subclasses, as json does */
}

static int put_float(Buf *b, double v) {
    if (!isfinite(v)) {
        PyErr_SetString(PyExc_ValueError, "Out of range float values are not JSON compliant");
        return -1;
    }
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL); /* what float.__repr__ writes */
    if (text == NULL) return -1;
    int result = put(b, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return result;
}

static int put_value(Buf *b, PyObject *value);

static int put_items(Buf *b, PyObject *sequence) {
    if (PUT_LITERAL(b, "[") < 0) return -1;
    PyObject *fast = PySequence_Fast(sequence, "a list or tuple");
    if (fast == NULL) return -1;
    int failed = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast) && !failed; i++) {
        failed = (i && PUT_LITERAL(b, ",") < 0) || put_value(b, PySequence_Fast_GET_ITEM(fast, i)) < 0;
    }
    Py_DECREF(fast);
    return failed || PUT_LITERAL(b, "]") < 0 ? -1 : 0;
}

static int put_key(Buf *b, PyObject *key, int first) {
    if (!PyUnicode_Check(key)) { /* json would turn some into text; the Python path writes them */
        PyErr_SetString(PyExc_TypeError, "a key that is not a str");
        return -1;
    }
    return (!first && PUT_LITERAL(b, ",") < 0) || put_string(b, key) < 0 || PUT_LITERAL(b, ":") < 0 ? -1 : 0;
}

static int put_object(Buf *b, PyObject *dict) {
    if (PUT_LITERAL(b, "{") < 0) return -1;
    Py_ssize_t pos = 0;
    PyObject *key, *item;
    int first = 1;
    while (PyDict_Next(dict, &pos, &key, &item)) {
        Py_INCREF(key);
        Py_INCREF(item);
        int failed = put_key(b, key, first) < 0 || put_value(b, item) < 0;
        Py_DECREF(key);
        Py_DECREF(item);
        if (failed) return -1;
        first = 0;
    }
    return PUT_LITERAL(b, "}");
}

/* A value as the standard encoder writes it, with default=nested_plain for what JSON has no form of. */
static int put_value(Buf *b, PyObject *value) {
    if (value == Py_None) return PUT_LITERAL(b, "null");
    if (value == Py_True) return PUT_LITERAL(b, "true");
    if (value == Py_False) return PUT_LITERAL(b, "false");
    if (PyUnicode_Check(value)) return put_string(b, value);
    if (PyLong_Check(value)) return put_int(b, value);
    if (PyFloat_Check(value)) return put_float(b, PyFloat_AS_DOUBLE(value));
    if (Py_EnterRecursiveCall(" while writing a change's JSON")) return -1;
    int result;
    if (PyList_Check(value) || PyTuple_Check(value)) {
        result = put_items(b, value);
    } else if (PyDict_Check(value)) {
        result = put_object(b, value);
    } else {
        PyObject *plain = PyObject_CallOneArg(NestedPlain, value);
        result = plain == NULL ? -1 : put_value(b, plain);
        Py_XDECREF(plain);
    }
    Py_LeaveRecursiveCall();
    return result;
}

/* -- rows: valuecodec.encode_row_shallow, written as it goes ----------------------------------------------- */

static int is_plain_exact(PyObject *value) {
    PyTypeObject *type = Py_TYPE(value);
    return value == Py_None || type == &PyUnicode_Type || type == &PyLong_Type || type == &PyBool_Type ||
           type == &PyDict_Type;
}

/* One column's value; its tag (a new reference) in *tag, or NULL when it needs none. */
static int put_column(Buf *b, PyObject *value, PyObject **tag) {
    *tag = NULL;
    if (is_plain_exact(value)) return put_value(b, value);
    if (Py_IS_TYPE(value, &PyFloat_Type)) {
        double v = PyFloat_AS_DOUBLE(value);
        if (isfinite(v)) return put_float(b, v);
        *tag = PyUnicode_FromString("float");
        if (*tag == NULL) return -1;
        return isnan(v) ? PUT_LITERAL(b, "\"NaN\"") : v > 0 ? PUT_LITERAL(b, "\"Infinity\"")
                                                              : PUT_LITERAL(b, "\"-Infinity\"");
    }
    PyObject *known = PyDict_GetItemWithError(Tagged, (PyObject *)Py_TYPE(value)); /* borrowed */
    PyObject *plain;
    if (known != NULL) {
        if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2) {
            PyErr_SetString(PyExc_RuntimeError, "TAGGED_EXACT values must be (tag, encode) pairs");
            return -1;
        }
        plain = PyObject_CallOneArg(PyTuple_GET_ITEM(known, 1), value);
        if (plain == NULL) return -1;
        *tag = Py_NewRef(PyTuple_GET_ITEM(known, 0));
    } else {
        if (PyErr_Occurred()) return -1;
        PyObject *pair = PyObject_CallOneArg(EncodeValue, value);
        if (pair == NULL) return -1;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_RuntimeError, "encode_value must return (plain, tag)");
            return -1;
        }
        plain = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        PyObject *found = PyTuple_GET_ITEM(pair, 1);
        int truthy = PyObject_IsTrue(found);
        if (truthy > 0) *tag = Py_NewRef(found);
        Py_DECREF(pair);
        if (truthy < 0) {
            Py_DECREF(plain);
            return -1;
        }
    }
    int result = put_value(b, plain);
    Py_DECREF(plain);
    return result;
}

static int put_row_item(Buf *b, PyObject *key, PyObject *value, int first, PyObject **tags) {
    PyObject *tag;
    if (put_key(b, key, first) < 0 || put_column(b, value, &tag) < 0) return -1;
    if (tag == NULL) return 0;
    int failed = (*tags == NULL && (*tags = PyDict_New()) == NULL) || PyDict_SetItem(*tags, key, tag) < 0;
    Py_DECREF(tag);
    return failed ? -1 : 0;
}

/* A row (None, a dict, or any mapping); *tags gets a dict of the columns' tags, or stays NULL. */
static int put_row(Buf *b, PyObject *row, PyObject **tags) {
    if (row == Py_None) return PUT_LITERAL(b, "null");
    if (PUT_LITERAL(b, "{") < 0) return -1;
    int first = 1;
    if (PyDict_CheckExact(row)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(row, &pos, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            int failed = put_row_item(b, key, value, first, tags) < 0;
            Py_DECREF(key);
            Py_DECREF(value);
            if (failed) return -1;
            first = 0;
        }
        return PUT_LITERAL(b, "}");
    }
    PyObject *items = PyObject_CallMethod(row, "items", NULL);
    PyObject *iterator = items == NULL ? NULL : PyObject_GetIter(items);
    Py_XDECREF(items);
    if (iterator == NULL) return -1;
    PyObject *pair;
    int failed = 0;
    while (!failed && (pair = PyIter_Next(iterator)) != NULL) {
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a row's items() must be (key, value) pairs");
            failed = 1;
        } else {
            failed = put_row_item(b, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), first, tags) < 0;
        }
        Py_DECREF(pair);
        first = 0;
    }
    Py_DECREF(iterator);
    if (failed || PyErr_Occurred()) return -1;
    return PUT_LITERAL(b, "}");
}

/* -- a change ---------------------------------------------------------------------------------------------- */

static int put_field(Buf *b, const char *name, PyObject *value) {
    return put(b, name, (Py_ssize_t)strlen(name)) < 0 || put_value(b, value) < 0 ? -1 : 0;
}

static int put_types(Buf *b, PyObject *tags[3]) {
    static const char *names[3] = {"\"new\":", "\"old\":", "\"extra\":"};
    if (tags[0] == NULL && tags[1] == NULL && tags[2] == NULL) return 0;
    if (PUT_LITERAL(b, ",\"types\":{") < 0) return -1;
    int first = 1;
    for (int i = 0; i < 3; i++) {
        if (tags[i] == NULL) continue;
        if ((!first && PUT_LITERAL(b, ",") < 0) || put(b, names[i], (Py_ssize_t)strlen(names[i])) < 0 ||
            put_object(b, tags[i]) < 0)
            return -1;
        first = 0;
    }
    return PUT_LITERAL(b, "}");
}

static int put_change(Buf *b, PyObject *change, PyObject *tags[3]) {
    PyObject *const *f = &PyTuple_GET_ITEM(change, 0);
    if (put_field(b, "{\"id\":", f[0]) < 0 || put_field(b, ",\"op\":", f[1]) < 0 ||
        put_field(b, ",\"schema\":", f[2]) < 0 || put_field(b, ",\"table\":", f[3]) < 0 ||
        PUT_LITERAL(b, ",\"new\":") < 0 || put_row(b, f[4], &tags[0]) < 0 ||
        PUT_LITERAL(b, ",\"old\":") < 0 || put_row(b, f[5], &tags[1]) < 0 ||
        put_field(b, ",\"changed\":", f[6]) < 0 || put_field(b, ",\"xid\":", f[7]) < 0)
        return -1;
    if (PUT_LITERAL(b, ",\"commit_time\":") < 0) return -1;
    if (f[8] == Py_None) {
        if (PUT_LITERAL(b, "null") < 0) return -1;
    } else {
        if (f[8] != LastTime) {
            PyObject *iso = PyObject_CallMethod(f[8], "isoformat", NULL);
            if (iso == NULL) return -1;
            Py_XSETREF(LastIso, iso);
            Py_XSETREF(LastTime, Py_NewRef(f[8]));
        }
        if (put_value(b, LastIso) < 0) return -1;
    }
    if (put_field(b, ",\"position\":", f[9]) < 0 || put_field(b, ",\"source\":", f[10]) < 0) return -1;
    int extra = f[11] == Py_None ? 0 : PyObject_IsTrue(f[11]);
    if (extra < 0) return -1;
    if (extra && (PUT_LITERAL(b, ",\"extra\":") < 0 || put_row(b, f[11], &tags[2]) < 0)) return -1;
    return put_types(b, tags) < 0 ? -1 : PUT_LITERAL(b, "}");
}

/* change_json(change) -> bytes: what Change.to_json() writes, UTF-8. */
static PyObject *change_json(PyObject *module, PyObject *change) {
    if (Tagged == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgchanges._jsonwrite is not configured");
        return NULL;
    }
    if (!PyTuple_Check(change) || PyTuple_GET_SIZE(change) != CHANGE_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "change_json() takes a Change");
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    PyObject *tags[3] = {NULL, NULL, NULL};
    PyObject *result = NULL;
    if (put_change(&b, change, tags) == 0) result = PyBytes_FromStringAndSize(b.data, b.len);
    PyMem_Free(b.data);
    for (int i = 0; i < 3; i++) Py_XDECREF(tags[i]);
    return result;
}

/* configure(TAGGED_EXACT, encode_value, nested_plain) */
static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(TAGGED_EXACT, encode_value, nested_plain)");
        return NULL;
    }
    Py_XSETREF(Tagged, Py_NewRef(args[0]));
    Py_XSETREF(EncodeValue, Py_NewRef(args[1]));
    Py_XSETREF(NestedPlain, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {"change_json", (PyCFunction)change_json, METH_O, "change_json(change) -> bytes: Change.to_json(), UTF-8"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pgchanges._jsonwrite", "Change.to_json at C speed (see pgchanges.change).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__jsonwrite(void) { return PyModule_Create(&module_def); }
